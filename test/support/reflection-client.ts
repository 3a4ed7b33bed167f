import {
  createFileRegistry,
  fromBinary,
  ScalarType,
  type DescEnum,
  type DescField,
  type DescFile,
  type DescMessage,
  type DescService,
  type FileRegistry,
} from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import { credentials, status as Code, type ChannelCredentials, type ClientDuplexStream, type StatusObject } from '@grpc/grpc-js';
import * as v1 from '../../proto/gen/grpc/reflection/v1/reflection.js';
import * as v1alpha from '../../proto/gen/grpc/reflection/v1alpha/reflection.js';

/*
 * A reflection client as unforgiving as grpcurl: it builds the described service only from
 * what the server answers, following each file's own dependency list, and refuses anything
 * that does not resolve. A server that drops dependency lists fails here as it fails there.
 */

export type ReflectionVersion = 'v1' | 'v1alpha';

// v1 and v1alpha messages are field-for-field identical.
export type ReflectionRequest = v1.ServerReflectionRequest;
export type ReflectionResponse = v1.ServerReflectionResponse;

export interface FieldDescription {
  name: string;
  /** Resolved, e.g. `string`, `passthru.storage.v1.OsType`, `repeated string`, `map<string, pkg.Message>`. */
  type: string;
}

export interface MessageDescription {
  name: string;
  file: string;
  fields: FieldDescription[];
}

export interface MethodDescription {
  name: string;
  kind: 'unary' | 'server_streaming' | 'client_streaming' | 'bidi_streaming';
  inputType: string;
  outputType: string;
}

export interface ServiceDescription {
  name: string;
  file: string;
  methods: MethodDescription[];
  /** Every message the methods use, directly or through fields, in the order first reached. */
  messages: MessageDescription[];
  /** The files the service was built from: its own, then its imports as they were fetched. */
  files: string[];
}

/** An error_response the server sent in place of an answer. */
export class ReflectionError extends Error {
  constructor(
    readonly code: number,
    readonly detail: string,
    request: string,
  ) {
    super(`reflection ${request}: ${Code[code] ?? code} (${code}): ${detail}`);
    this.name = 'ReflectionError';
  }
}

interface ReflectionStub {
  serverReflectionInfo(): ClientDuplexStream<ReflectionRequest, ReflectionResponse>;
  close(): void;
}

export class ReflectionClient {
  private readonly stub: ReflectionStub;

  /** Plaintext unless `tls` gives credentials (and channel options) for an mTLS server. */
  constructor(address: string, version: ReflectionVersion = 'v1', tls?: { credentials: ChannelCredentials; options: object }) {
    const creds = tls?.credentials ?? credentials.createInsecure();
    const options = tls?.options ?? {};
    this.stub =
      version === 'v1'
        ? new v1.ServerReflectionClient(address, creds, options)
        : new v1alpha.ServerReflectionClient(address, creds, options);
  }

  /** One ServerReflectionInfo stream; several questions can be asked on it in turn. */
  open(): ReflectionSession {
    return new ReflectionSession(this.stub.serverReflectionInfo());
  }

  async listServices(): Promise<string[]> {
    return this.withSession(async (session) => {
      const response = await session.ask({ listServices: '' });
      if (!response.listServicesResponse) throw new Error('reflection list_services: the answer lists no services');
      return response.listServicesResponse.service.map((service) => service.name);
    });
  }

  /**
   * Describes a service the way grpcurl does: the file containing it, then every import
   * asked for by name (even when the first answer already carried it), then a registry that
   * throws on any import or type it cannot resolve.
   */
  async describe(serviceName: string): Promise<ServiceDescription> {
    return this.withSession(async (session) => {
      const [root] = await session.files({ fileContainingSymbol: serviceName });
      if (!root) throw new Error(`reflection file_containing_symbol ${serviceName}: the answer holds no file`);
      const fetched = await fetchImports(session, root);
      let registry: FileRegistry;
      try {
        registry = createFileRegistry(root, (name) => fetched.get(name));
      } catch (err) {
        const source = `${root.name} and its imports`;
        throw new Error(`cannot resolve ${serviceName} from reflection (${source}): ${messageOf(err)}`);
      }
      const service = registry.getService(serviceName);
      if (!service) throw new Error(`${serviceName} is not a service declared in ${root.name}`);
      return describeService(service, [root.name, ...fetched.keys()]);
    });
  }

  close(): void {
    this.stub.close();
  }

  private async withSession<T>(use: (session: ReflectionSession) => Promise<T>): Promise<T> {
    const session = this.open();
    let result: T;
    try {
      result = await use(session);
    } catch (err) {
      session.cancel();
      throw err;
    }
    await session.close();
    return result;
  }
}

/** Asks for each import by file name, transitively, as a client missing them would. */
async function fetchImports(
  session: ReflectionSession,
  root: FileDescriptorProto,
): Promise<Map<string, FileDescriptorProto>> {
  const fetched = new Map<string, FileDescriptorProto>();
  const wanted = root.dependency.map((name) => ({ name, importedBy: root.name }));
  for (let next = wanted.shift(); next; next = wanted.shift()) {
    const { name, importedBy } = next;
    if (name === root.name || fetched.has(name)) continue;
    let answer: FileDescriptorProto[];
    try {
      answer = await session.files({ fileByFilename: name });
    } catch (err) {
      throw new Error(`cannot fetch ${name}, imported by ${importedBy}: ${messageOf(err)}`);
    }
    const file = answer.find((candidate) => candidate.name === name);
    if (!file) throw new Error(`reflection file_by_filename ${name}: the answer does not hold ${name}`);
    fetched.set(name, file);
    wanted.push(...file.dependency.map((dependency) => ({ name: dependency, importedBy: name })));
  }
  return fetched;
}

function describeService(service: DescService, files: string[]): ServiceDescription {
  const visibility = new Visibility();
  const messages: MessageDescription[] = [];
  const reached = new Set<string>();
  const toDescribe: DescMessage[] = [];
  const reach = (message: DescMessage): void => {
    if (reached.has(message.typeName)) return;
    reached.add(message.typeName);
    toDescribe.push(message);
  };

  const methods = service.methods.map((method): MethodDescription => {
    const usedBy = `${service.typeName}.${method.name}`;
    visibility.check(service.file, method.input, usedBy);
    visibility.check(service.file, method.output, usedBy);
    reach(method.input);
    reach(method.output);
    return {
      name: method.name,
      kind: method.methodKind,
      inputType: method.input.typeName,
      outputType: method.output.typeName,
    };
  });

  for (let message = toDescribe.shift(); message; message = toDescribe.shift()) {
    const fields = message.fields.map((field): FieldDescription => {
      const usedBy = `${message.typeName}.${field.name}`;
      const type = field.message ?? field.enum;
      if (type) visibility.check(message.file, type, usedBy);
      if (field.message) reach(field.message);
      return { name: field.name, type: typeOf(field) };
    });
    messages.push({ name: message.typeName, file: message.file.proto.name, fields });
  }

  return { name: service.typeName, file: service.file.proto.name, methods, messages, files };
}

/**
 * protoc's rule, which the registry alone does not enforce: a file may use only its own
 * types and those of the files it imports (or that those re-export with `import public`).
 */
class Visibility {
  private readonly visibleFrom = new Map<string, Set<string>>();

  check(from: DescFile, type: DescMessage | DescEnum, usedBy: string): void {
    if (!this.filesVisibleFrom(from).has(type.file.proto.name)) {
      throw new Error(
        `${usedBy} uses ${type.typeName} from ${type.file.proto.name}, which ${from.proto.name} does not import`,
      );
    }
  }

  private filesVisibleFrom(file: DescFile): Set<string> {
    let visible = this.visibleFrom.get(file.proto.name);
    if (!visible) {
      visible = new Set([file.proto.name]);
      for (const dependency of file.dependencies) addPublicClosure(dependency, visible);
      this.visibleFrom.set(file.proto.name, visible);
    }
    return visible;
  }
}

function addPublicClosure(file: DescFile, into: Set<string>): void {
  if (into.has(file.proto.name)) return;
  into.add(file.proto.name);
  for (const index of file.proto.publicDependency) {
    const reexported = file.dependencies[index];
    if (reexported) addPublicClosure(reexported, into);
  }
}

function typeOf(field: DescField): string {
  switch (field.fieldKind) {
    case 'scalar':
      return scalarName(field.scalar);
    case 'enum':
      return field.enum.typeName;
    case 'message':
      return field.message.typeName;
    case 'list': {
      const element = field.scalar === undefined ? (field.message ?? field.enum).typeName : scalarName(field.scalar);
      return `repeated ${element}`;
    }
    case 'map': {
      const value = field.scalar === undefined ? (field.message ?? field.enum).typeName : scalarName(field.scalar);
      return `map<${scalarName(field.mapKey)}, ${value}>`;
    }
  }
}

function scalarName(scalar: ScalarType): string {
  return ScalarType[scalar].toLowerCase();
}

/** One ServerReflectionInfo stream: answers arrive in the order the questions were asked. */
export class ReflectionSession {
  private readonly awaiting: { resolve: (response: ReflectionResponse) => void; reject: (err: Error) => void }[] = [];
  private broken: Error | undefined;
  private readonly finished: Promise<StatusObject>;

  constructor(private readonly stream: ClientDuplexStream<ReflectionRequest, ReflectionResponse>) {
    this.finished = new Promise((resolve) => stream.on('status', resolve));
    stream.on('data', (response: ReflectionResponse) => {
      const asker = this.awaiting.shift();
      if (asker) asker.resolve(response);
      else this.break(new Error('reflection server sent an answer nobody asked for'));
    });
    stream.on('error', (err: Error) => this.break(err));
    stream.on('end', () => this.break(new Error('reflection server ended the stream')));
  }

  /** Sends one request and returns the raw response, error_response included. */
  ask(request: Partial<ReflectionRequest>): Promise<ReflectionResponse> {
    if (this.broken) return Promise.reject(this.broken);
    return new Promise((resolve, reject) => {
      this.awaiting.push({ resolve, reject });
      this.stream.write({ host: '', ...request });
    });
  }

  /** Asks for files; an error_response or an answer of another kind throws. */
  async files(request: Partial<ReflectionRequest>): Promise<FileDescriptorProto[]> {
    const response = await this.ask(request);
    const what = describeRequest(request);
    if (response.errorResponse) {
      throw new ReflectionError(response.errorResponse.errorCode, response.errorResponse.errorMessage, what);
    }
    if (!response.fileDescriptorResponse) throw new Error(`reflection ${what}: the answer holds no file descriptors`);
    const encoded = response.fileDescriptorResponse.fileDescriptorProto;
    return encoded.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
  }

  /** Ends our side and waits for the server to end its side with OK. */
  async close(): Promise<void> {
    this.stream.end();
    const status = await this.finished;
    if (status.code !== Code.OK) {
      throw new Error(`reflection stream closed with ${Code[status.code]}: ${status.details}`);
    }
  }

  cancel(): void {
    this.stream.cancel();
  }

  private break(err: Error): void {
    this.broken ??= err;
    for (const asker of this.awaiting.splice(0)) asker.reject(err);
  }
}

function describeRequest(request: Partial<ReflectionRequest>): string {
  if (request.fileByFilename !== undefined) return `file_by_filename ${request.fileByFilename}`;
  if (request.fileContainingSymbol !== undefined) return `file_containing_symbol ${request.fileContainingSymbol}`;
  if (request.fileContainingExtension !== undefined) {
    const { containingType, extensionNumber } = request.fileContainingExtension;
    return `file_containing_extension ${containingType}(${extensionNumber})`;
  }
  return 'request';
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
