import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  FileDescriptorProtoSchema,
  FileDescriptorSetSchema,
  type DescriptorProto,
  type EnumDescriptorProto,
  type FieldDescriptorProto,
  type FileDescriptorProto,
} from '@bufbuild/protobuf/wkt';
import { status as Code, type ServerDuplexStream } from '@grpc/grpc-js';
import * as v1 from '../proto/gen/grpc/reflection/v1/reflection.js';
import * as v1alpha from '../proto/gen/grpc/reflection/v1alpha/reflection.js';
import type { ServiceRegistration } from './service.js';

/*
 * gRPC server reflection answered from the descriptor set `buf build` writes.
 *
 * We do not use @grpc/reflection: it serves file descriptors without their dependency lists,
 * so grpcurl never fetches google/protobuf/timestamp.proto and `describe` fails with "cannot
 * resolve type". Serving the bytes of the buf-built FileDescriptorProtos keeps every import.
 */

const DESCRIPTOR_SET_PATH = join('proto', 'gen', 'descriptors.binpb');

let cachedDescriptorSet: Uint8Array | undefined;

/**
 * The FileDescriptorSet of every proto the servers speak (imports included). Looked up by
 * walking up from this module, because it runs both as common/reflection.ts and as
 * dist/common/reflection.js.
 */
export function loadDescriptorSet(): Uint8Array {
  if (cachedDescriptorSet) return cachedDescriptorSet;
  const start = dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; dir = dirname(dir)) {
    const candidate = join(dir, DESCRIPTOR_SET_PATH);
    if (existsSync(candidate)) {
      cachedDescriptorSet = readFileSync(candidate);
      return cachedDescriptorSet;
    }
    if (dirname(dir) === dir) {
      throw new Error(`${DESCRIPTOR_SET_PATH} not found in ${start} or any directory above it; run "npm run proto"`);
    }
  }
}

/**
 * The two reflection services (v1 and the v1alpha grpcurl and older tools still ask for),
 * answering from `descriptorSet`. `listServices` is asked on every list request, so services
 * added after this call are listed too.
 */
export function reflectionServices(descriptorSet: Uint8Array, listServices: () => string[]): ServiceRegistration[] {
  const index = indexOf(descriptorSet);
  const serverReflectionInfo = answerReflectionRequests(index, listServices);
  return [
    {
      name: 'grpc.reflection.v1.ServerReflection',
      definition: v1.ServerReflectionService,
      implementation: { serverReflectionInfo } satisfies v1.ServerReflectionServer,
    },
    {
      name: 'grpc.reflection.v1alpha.ServerReflection',
      definition: v1alpha.ServerReflectionService,
      implementation: { serverReflectionInfo } satisfies v1alpha.ServerReflectionServer,
    },
  ];
}

/**
 * One index per descriptor set for the process: a host agent serves reflection on every VM's
 * socket, and building the index (decode and re-encode every file) is most of a server's
 * start-up.
 */
const indexes = new WeakMap<Uint8Array, DescriptorIndex>();

function indexOf(descriptorSet: Uint8Array): DescriptorIndex {
  let index = indexes.get(descriptorSet);
  if (!index) indexes.set(descriptorSet, (index = new DescriptorIndex(descriptorSet)));
  return index;
}

// v1 and v1alpha messages are field-for-field identical, so one handler serves both.
type ReflectionRequest = v1.ServerReflectionRequest;
type ReflectionResponse = v1.ServerReflectionResponse;

/** What the reflection protocol can ask about, indexed once from the descriptor set. */
class DescriptorIndex {
  private readonly files = new Map<string, { encoded: Buffer; dependencies: string[] }>();
  private readonly fileOfSymbol = new Map<string, string>();
  private readonly messageTypes = new Set<string>();
  private readonly fileOfExtension = new Map<string, string>();
  private readonly extensionNumbersOfType = new Map<string, number[]>();

  constructor(descriptorSet: Uint8Array) {
    const set = fromBinary(FileDescriptorSetSchema, descriptorSet);
    for (const file of set.file) {
      // Re-encoded from the decoded proto, so `dependency` travels with every file.
      this.files.set(file.name, {
        encoded: Buffer.from(toBinary(FileDescriptorProtoSchema, file)),
        dependencies: file.dependency,
      });
      this.indexFile(file);
    }
    for (const [name, { dependencies }] of this.files) {
      const missing = dependencies.filter((dependency) => !this.files.has(dependency));
      if (missing.length > 0) {
        // A client could never resolve this file; better to fail at startup than at describe.
        throw new Error(`descriptor set: ${name} imports ${missing.join(', ')}, which the set does not contain`);
      }
    }
    for (const numbers of this.extensionNumbersOfType.values()) numbers.sort((a, b) => a - b);
  }

  hasFile(name: string): boolean {
    return this.files.has(name);
  }

  fileContainingSymbol(symbol: string): string | undefined {
    return this.fileOfSymbol.get(trimLeadingDot(symbol));
  }

  fileContainingExtension(containingType: string, extensionNumber: number): string | undefined {
    return this.fileOfExtension.get(extensionKey(trimLeadingDot(containingType), extensionNumber));
  }

  /** Undefined when the type is not a known message; empty when it is one with no extensions. */
  extensionNumbersOf(containingType: string): number[] | undefined {
    const type = trimLeadingDot(containingType);
    if (!this.messageTypes.has(type)) return undefined;
    return this.extensionNumbersOfType.get(type) ?? [];
  }

  /**
   * The file followed by everything it imports, transitively, each file once: a client
   * can build the file from this one answer without asking again (what grpc-go sends).
   */
  fileWithDependencies(name: string): Buffer[] {
    const sent = new Set<string>();
    const answer: Buffer[] = [];
    const visit = (fileName: string): void => {
      if (sent.has(fileName)) return;
      sent.add(fileName);
      const file = this.files.get(fileName);
      if (!file) throw new Error(`descriptor set has no ${fileName}`);
      answer.push(file.encoded);
      for (const dependency of file.dependencies) visit(dependency);
    };
    visit(name);
    return answer;
  }

  private indexFile(file: FileDescriptorProto): void {
    const scope = file.package ? `${file.package}.` : '';
    for (const message of file.messageType) this.indexMessage(file.name, scope, message);
    for (const enumType of file.enumType) this.indexEnum(file.name, scope, enumType);
    for (const extension of file.extension) this.indexExtension(file.name, scope, extension);
    for (const service of file.service) {
      const serviceName = scope + service.name;
      this.addSymbol(serviceName, file.name);
      for (const method of service.method) this.addSymbol(`${serviceName}.${method.name}`, file.name);
    }
  }

  private indexMessage(fileName: string, scope: string, message: DescriptorProto): void {
    const typeName = scope + message.name;
    this.addSymbol(typeName, fileName);
    this.messageTypes.add(typeName);
    const nestedScope = `${typeName}.`;
    for (const nested of message.nestedType) this.indexMessage(fileName, nestedScope, nested);
    for (const enumType of message.enumType) this.indexEnum(fileName, nestedScope, enumType);
    for (const extension of message.extension) this.indexExtension(fileName, nestedScope, extension);
  }

  private indexEnum(fileName: string, scope: string, enumType: EnumDescriptorProto): void {
    this.addSymbol(scope + enumType.name, fileName);
  }

  private indexExtension(fileName: string, scope: string, extension: FieldDescriptorProto): void {
    this.addSymbol(scope + extension.name, fileName);
    const containingType = trimLeadingDot(extension.extendee);
    this.fileOfExtension.set(extensionKey(containingType, extension.number), fileName);
    const numbers = this.extensionNumbersOfType.get(containingType) ?? [];
    numbers.push(extension.number);
    this.extensionNumbersOfType.set(containingType, numbers);
  }

  private addSymbol(symbol: string, fileName: string): void {
    // protoc rejects duplicate symbols, so the first declaration is the only one.
    if (!this.fileOfSymbol.has(symbol)) this.fileOfSymbol.set(symbol, fileName);
  }
}

function answerReflectionRequests(index: DescriptorIndex, listServices: () => string[]) {
  return (call: ServerDuplexStream<ReflectionRequest, ReflectionResponse>): void => {
    call.on('data', (request: ReflectionRequest) => {
      call.write({ validHost: request.host, originalRequest: request, ...answer(index, listServices, request) });
    });
    call.on('end', () => call.end());
  };
}

type ReflectionAnswer = Omit<ReflectionResponse, 'validHost' | 'originalRequest'>;

function answer(index: DescriptorIndex, listServices: () => string[], request: ReflectionRequest): ReflectionAnswer {
  try {
    if (request.fileByFilename !== undefined) {
      const name = request.fileByFilename;
      if (!index.hasFile(name)) return failure(Code.NOT_FOUND, `file "${name}" not found`);
      return files(index.fileWithDependencies(name));
    }
    if (request.fileContainingSymbol !== undefined) {
      const symbol = request.fileContainingSymbol;
      const file = index.fileContainingSymbol(symbol);
      if (file === undefined) return failure(Code.NOT_FOUND, `symbol "${symbol}" not found`);
      return files(index.fileWithDependencies(file));
    }
    if (request.fileContainingExtension !== undefined) {
      const { containingType, extensionNumber } = request.fileContainingExtension;
      const file = index.fileContainingExtension(containingType, extensionNumber);
      if (file === undefined) {
        return failure(Code.NOT_FOUND, `extension ${extensionNumber} of "${containingType}" not found`);
      }
      return files(index.fileWithDependencies(file));
    }
    if (request.allExtensionNumbersOfType !== undefined) {
      const baseTypeName = request.allExtensionNumbersOfType;
      const extensionNumber = index.extensionNumbersOf(baseTypeName);
      if (extensionNumber === undefined) return failure(Code.NOT_FOUND, `message type "${baseTypeName}" not found`);
      return { allExtensionNumbersResponse: { baseTypeName, extensionNumber } };
    }
    if (request.listServices !== undefined) {
      return { listServicesResponse: { service: listServices().map((name) => ({ name })) } };
    }
    return failure(Code.INVALID_ARGUMENT, 'reflection request names nothing to look up (message_request is not set)');
  } catch (err) {
    // One bad answer should not cost the client its stream (and everything it has learnt on it).
    return failure(Code.INTERNAL, `reflection failed: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function files(fileDescriptorProto: Buffer[]): ReflectionAnswer {
  return { fileDescriptorResponse: { fileDescriptorProto } };
}

function failure(errorCode: Code, errorMessage: string): ReflectionAnswer {
  return { errorResponse: { errorCode, errorMessage } };
}

function extensionKey(containingType: string, extensionNumber: number): string {
  return `${containingType}#${extensionNumber}`;
}

function trimLeadingDot(typeName: string): string {
  return typeName.startsWith('.') ? typeName.slice(1) : typeName;
}
