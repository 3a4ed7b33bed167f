import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  DescriptorProto_ExtensionRangeSchema,
  DescriptorProtoSchema,
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as FieldType,
  FieldDescriptorProtoSchema,
  FileDescriptorProtoSchema,
  FileDescriptorSetSchema,
  MethodDescriptorProtoSchema,
  ServiceDescriptorProtoSchema,
  type FileDescriptorProto,
} from '@bufbuild/protobuf/wkt';
import {
  credentials,
  Server,
  ServerCredentials,
  status as Code,
  type ClientReadableStream,
  type ServiceError,
  type StatusObject,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { expect } from 'chai';
import { HealthRegistry } from '../../common/health.js';
import { loadDescriptorSet, reflectionServices } from '../../common/reflection.js';
import type { ServiceRegistration } from '../../common/service.js';
import {
  HealthCheckResponse_ServingStatus as Serving,
  HealthClient,
  type HealthCheckResponse,
} from '../../proto/gen/grpc/health/v1/health.js';
import { DiagnosticsServiceService, type DiagnosticsServiceServer } from '../../proto/gen/passthru/diag/v1/diag.js';
import { StorageArrayServiceService } from '../../proto/gen/passthru/storage/v1/storage.js';
import { ReflectionClient, ReflectionError, type ServiceDescription } from '../support/reflection-client.js';

const STORAGE = 'passthru.storage.v1.StorageArrayService';
const DIAGNOSTICS = 'passthru.diag.v1.DiagnosticsService';
const STORAGE_FILE = 'passthru/storage/v1/storage.proto';
const TIMESTAMP_FILE = 'google/protobuf/timestamp.proto';

interface Running {
  server: Server;
  address: string;
}

async function serve(registrations: ServiceRegistration[]): Promise<Running> {
  const server = new Server();
  for (const { definition, implementation } of registrations) server.addService(definition, implementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, bound) =>
      err ? reject(err) : resolve(bound),
    ),
  );
  return { server, address: `127.0.0.1:${port}` };
}

/** A server with reflection over `descriptorSet` and nothing else. */
async function serveReflectionOnly(descriptorSet: Uint8Array, services: string[]): Promise<Running> {
  return serve(reflectionServices(descriptorSet, () => services));
}

function diagnostics(): ServiceRegistration {
  const implementation: DiagnosticsServiceServer = {
    ping: (call, callback) => callback(null, { receivedBytes: call.request.payload.length }),
  };
  return { name: DIAGNOSTICS, definition: DiagnosticsServiceService, implementation };
}

function unimplementedStorage(): ServiceRegistration {
  const implementation: UntypedServiceImplementation = {};
  for (const method of Object.keys(StorageArrayServiceService)) {
    implementation[method] = (_call: unknown, callback: (err: Partial<StatusObject>) => void) =>
      callback({ code: Code.UNIMPLEMENTED, details: `${method} is not implemented here` });
  }
  return { name: STORAGE, definition: StorageArrayServiceService, implementation };
}

function descriptorSetOf(files: FileDescriptorProto[]): Uint8Array {
  return toBinary(FileDescriptorSetSchema, create(FileDescriptorSetSchema, { file: files }));
}

function fileOf(descriptorSet: Uint8Array, name: string): FileDescriptorProto {
  const file = fromBinary(FileDescriptorSetSchema, descriptorSet).file.find((candidate) => candidate.name === name);
  if (!file) throw new Error(`${name} is not in the descriptor set`);
  return file;
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection, got an answer');
}

function names(answer: FileDescriptorProto[]): string[] {
  return answer.map((file) => file.name);
}

/** A Watch stream read one status at a time. */
class WatchRecorder {
  private readonly received: Serving[] = [];
  private readonly waiting: ((status: Serving) => void)[] = [];
  readonly ended: Promise<StatusObject>;

  constructor(readonly stream: ClientReadableStream<HealthCheckResponse>) {
    stream.on('data', (response: HealthCheckResponse) => {
      const waiter = this.waiting.shift();
      if (waiter) waiter(response.status);
      else this.received.push(response.status);
    });
    stream.on('error', () => {
      // The outcome is read from 'status'; without a listener a cancel would crash the run.
    });
    this.ended = new Promise((resolve) => stream.on('status', resolve));
  }

  next(): Promise<Serving> {
    const status = this.received.shift();
    if (status !== undefined) return Promise.resolve(status);
    return new Promise((resolve) => this.waiting.push(resolve));
  }
}

function check(client: HealthClient, service: string): Promise<Serving> {
  return new Promise((resolve, reject) =>
    client.check({ service }, (err, response) => (err ? reject(err) : resolve(response.status))),
  );
}

function fieldsOf(description: ServiceDescription, message: string): Record<string, string> {
  const found = description.messages.find((candidate) => candidate.name === message);
  if (!found) throw new Error(`${message} is not among the messages ${description.name} uses`);
  return Object.fromEntries(found.fields.map((field) => [field.name, field.type]));
}

describe('server reflection and health (integration)', function () {
  const descriptorSet = loadDescriptorSet();
  const health = new HealthRegistry('SERVING');
  const registrations: ServiceRegistration[] = [diagnostics(), unimplementedStorage(), health.registration()];
  // Lazy, so the reflection services list themselves too.
  const registeredNames = () => registrations.map((registration) => registration.name);
  registrations.push(...reflectionServices(descriptorSet, registeredNames));
  let running: Running;
  let reflection: ReflectionClient;
  let reflectionAlpha: ReflectionClient;
  let healthClient: HealthClient;

  before(async function () {
    health.set(STORAGE, 'SERVING');
    health.set(DIAGNOSTICS, 'SERVING');
    running = await serve(registrations);
    reflection = new ReflectionClient(running.address, 'v1');
    reflectionAlpha = new ReflectionClient(running.address, 'v1alpha');
    healthClient = new HealthClient(running.address, credentials.createInsecure());
  });

  after(function () {
    reflection?.close();
    reflectionAlpha?.close();
    healthClient?.close();
    running?.server.forceShutdown();
  });

  describe('listing', function () {
    const expected = [
      DIAGNOSTICS,
      'grpc.health.v1.Health',
      'grpc.reflection.v1.ServerReflection',
      'grpc.reflection.v1alpha.ServerReflection',
      STORAGE,
    ].sort();

    it('v1 lists exactly the registered services', async function () {
      expect((await reflection.listServices()).sort()).to.deep.equal(expected);
    });

    it('v1alpha lists exactly the registered services', async function () {
      expect((await reflectionAlpha.listServices()).sort()).to.deep.equal(expected);
    });
  });

  describe('strict describe', function () {
    it('resolves StorageArrayService with google.protobuf.Timestamp on Lun (lost-dependency defect)', async function () {
      const description = await reflection.describe(STORAGE);
      expect(description.file).to.equal(STORAGE_FILE);
      expect(description.files).to.deep.equal([STORAGE_FILE, TIMESTAMP_FILE]);
      expect(description.methods.find((method) => method.name === 'GetLun')).to.deep.equal({
        name: 'GetLun',
        kind: 'unary',
        inputType: 'passthru.storage.v1.GetLunRequest',
        outputType: 'passthru.storage.v1.GetLunResponse',
      });
      const lun = fieldsOf(description, 'passthru.storage.v1.Lun');
      expect(lun.create_time).to.equal('google.protobuf.Timestamp');
      expect(lun.os_type).to.equal('passthru.storage.v1.OsType');
      expect(fieldsOf(description, 'google.protobuf.Timestamp')).to.deep.equal({ seconds: 'int64', nanos: 'int32' });
    });

    it('resolves StorageArrayService over v1alpha too', async function () {
      const description = await reflectionAlpha.describe(STORAGE);
      expect(fieldsOf(description, 'passthru.storage.v1.Lun').create_time).to.equal('google.protobuf.Timestamp');
    });

    it('resolves grpc.health.v1.Health', async function () {
      const description = await reflection.describe('grpc.health.v1.Health');
      expect(description.methods.map((method) => `${method.name}:${method.kind}`)).to.have.members([
        'Check:unary',
        'List:unary',
        'Watch:server_streaming',
      ]);
      expect(fieldsOf(description, 'grpc.health.v1.HealthCheckResponse').status).to.equal(
        'grpc.health.v1.HealthCheckResponse.ServingStatus',
      );
      expect(fieldsOf(description, 'grpc.health.v1.HealthListResponse').statuses).to.equal(
        'map<string, grpc.health.v1.HealthCheckResponse>',
      );
    });

    it('resolves grpc.reflection.v1.ServerReflection', async function () {
      const description = await reflection.describe('grpc.reflection.v1.ServerReflection');
      expect(description.methods).to.deep.equal([
        {
          name: 'ServerReflectionInfo',
          kind: 'bidi_streaming',
          inputType: 'grpc.reflection.v1.ServerReflectionRequest',
          outputType: 'grpc.reflection.v1.ServerReflectionResponse',
        },
      ]);
      expect(fieldsOf(description, 'grpc.reflection.v1.FileDescriptorResponse').file_descriptor_proto).to.equal(
        'repeated bytes',
      );
    });

    it('resolves passthru.diag.v1.DiagnosticsService', async function () {
      const description = await reflection.describe(DIAGNOSTICS);
      expect(fieldsOf(description, 'passthru.diag.v1.PingRequest')).to.deep.equal({ payload: 'bytes' });
    });
  });

  describe('one reflection stream', function () {
    it('echoes the host and the original request in every response', async function () {
      const session = reflection.open();
      const response = await session.ask({ host: 'array-a', fileContainingSymbol: 'passthru.diag.v1.PingRequest' });
      expect(response.validHost).to.equal('array-a');
      expect(response.originalRequest?.host).to.equal('array-a');
      expect(response.originalRequest?.fileContainingSymbol).to.equal('passthru.diag.v1.PingRequest');
      await session.close();
    });

    it('answers an unknown file with NOT_FOUND and keeps working afterwards', async function () {
      const session = reflection.open();
      const err = await rejection(session.files({ fileByFilename: 'passthru/nothing/v1/nothing.proto' }));
      expect(err).to.be.instanceOf(ReflectionError);
      expect((err as ReflectionError).code).to.equal(Code.NOT_FOUND);
      expect((err as ReflectionError).detail).to.contain('passthru/nothing/v1/nothing.proto');
      expect(names(await session.files({ fileByFilename: 'passthru/diag/v1/diag.proto' }))).to.deep.equal([
        'passthru/diag/v1/diag.proto',
      ]);
      await session.close();
    });

    it('answers an unknown symbol with NOT_FOUND and keeps working afterwards', async function () {
      const session = reflection.open();
      const err = await rejection(session.files({ fileContainingSymbol: 'passthru.storage.v1.NoSuchThing' }));
      expect(err).to.be.instanceOf(ReflectionError);
      expect((err as ReflectionError).code).to.equal(Code.NOT_FOUND);
      expect((err as ReflectionError).detail).to.contain('passthru.storage.v1.NoSuchThing');
      expect(names(await session.files({ fileContainingSymbol: STORAGE })).at(0)).to.equal(STORAGE_FILE);
      await session.close();
    });

    it('answers a request naming nothing with INVALID_ARGUMENT and keeps working afterwards', async function () {
      const session = reflection.open();
      const response = await session.ask({});
      expect(response.errorResponse?.errorCode).to.equal(Code.INVALID_ARGUMENT);
      expect((await session.ask({ listServices: '' })).listServicesResponse?.service).to.have.length(5);
      await session.close();
    });

    it('answers the file containing a symbol first, followed by its dependencies', async function () {
      const session = reflection.open();
      const storage = await session.files({ fileByFilename: STORAGE_FILE });
      expect(names(storage)).to.deep.equal([STORAGE_FILE, TIMESTAMP_FILE]);
      expect(names(await session.files({ fileContainingSymbol: 'google.protobuf.Timestamp' }))).to.deep.equal([
        TIMESTAMP_FILE,
      ]);
      const errorDetails = await session.files({ fileContainingSymbol: 'google.rpc.BadRequest.FieldViolation' });
      expect(names(errorDetails)).to.deep.equal(['google/rpc/error_details.proto', 'google/protobuf/duration.proto']);
      await session.close();
    });

    it('finds methods, enums and nested enums by their full names', async function () {
      const session = reflection.open();
      for (const [symbol, file] of [
        [`${STORAGE}.GetLun`, STORAGE_FILE],
        ['passthru.storage.v1.OsType', STORAGE_FILE],
        ['grpc.health.v1.HealthCheckResponse.ServingStatus', 'grpc/health/v1/health.proto'],
      ] as const) {
        expect(names(await session.files({ fileContainingSymbol: symbol })).at(0), symbol).to.equal(file);
      }
      await session.close();
    });

    it('ends the response stream with OK when the client ends its side', async function () {
      const session = reflection.open();
      await session.ask({ listServices: '' });
      await session.close();
    });
  });

  describe('health', function () {
    it('Check answers SERVING for the whole server and for a registered service', async function () {
      expect(await check(healthClient, '')).to.equal(Serving.SERVING);
      expect(await check(healthClient, DIAGNOSTICS)).to.equal(Serving.SERVING);
    });

    it('Check answers an unknown service with NOT_FOUND', async function () {
      const err = (await rejection(check(healthClient, 'passthru.nothing.v1.Nothing'))) as ServiceError;
      expect(err.code).to.equal(Code.NOT_FOUND);
    });

    it('List answers every status', async function () {
      const statuses = await new Promise<Record<string, HealthCheckResponse>>((resolve, reject) =>
        healthClient.list({}, (err, response) => (err ? reject(err) : resolve(response.statuses))),
      );
      expect(statuses['']?.status).to.equal(Serving.SERVING);
      expect(statuses[DIAGNOSTICS]?.status).to.equal(Serving.SERVING);
    });

    it('set to NOT_SERVING is seen by Check and by an open Watch', async function () {
      const watch = new WatchRecorder(healthClient.watch({ service: STORAGE }));
      expect(await watch.next()).to.equal(Serving.SERVING);
      health.set(STORAGE, 'NOT_SERVING');
      expect(await watch.next()).to.equal(Serving.NOT_SERVING);
      expect(await check(healthClient, STORAGE)).to.equal(Serving.NOT_SERVING);
      health.set(STORAGE, 'SERVING');
      expect(await watch.next()).to.equal(Serving.SERVING);
      watch.stream.cancel();
      expect((await watch.ended).code).to.equal(Code.CANCELLED);
    });

    it('Watch of an unknown service answers SERVICE_UNKNOWN, then the status once it is set', async function () {
      const watch = new WatchRecorder(healthClient.watch({ service: 'passthru.later.v1.Later' }));
      expect(await watch.next()).to.equal(Serving.SERVICE_UNKNOWN);
      health.set('passthru.later.v1.Later', 'SERVING');
      expect(await watch.next()).to.equal(Serving.SERVING);
      watch.stream.cancel();
      await watch.ended;
    });

    it('shutdown() sends NOT_SERVING to watchers and ends their streams', async function () {
      const draining = new HealthRegistry('SERVING');
      draining.set(STORAGE, 'SERVING');
      const { server, address } = await serve([draining.registration()]);
      const client = new HealthClient(address, credentials.createInsecure());
      try {
        const whole = new WatchRecorder(client.watch({ service: '' }));
        const storage = new WatchRecorder(client.watch({ service: STORAGE }));
        expect(await whole.next()).to.equal(Serving.SERVING);
        expect(await storage.next()).to.equal(Serving.SERVING);
        draining.shutdown();
        expect(await whole.next()).to.equal(Serving.NOT_SERVING);
        expect(await storage.next()).to.equal(Serving.NOT_SERVING);
        expect((await whole.ended).code).to.equal(Code.OK);
        expect((await storage.ended).code).to.equal(Code.OK);
        expect(await check(client, STORAGE)).to.equal(Serving.NOT_SERVING);
        draining.set(STORAGE, 'SERVING');
        expect(draining.get(STORAGE), 'set() after shutdown() is ignored').to.equal('NOT_SERVING');
      } finally {
        client.close();
        server.forceShutdown();
      }
    });
  });

  describe('imports and extensions (synthetic descriptor set)', function () {
    // top imports middle and base, middle imports base: base must still be sent only once.
    const message = (name: string, fields: { name: string; number: number; typeName: string }[] = []) =>
      create(DescriptorProtoSchema, {
        name,
        field: fields.map((field) =>
          create(FieldDescriptorProtoSchema, { ...field, label: Label.OPTIONAL, type: FieldType.MESSAGE }),
        ),
      });
    const extension = (name: string, number: number, type: FieldType, typeName = '') =>
      create(FieldDescriptorProtoSchema, {
        name,
        number,
        label: Label.OPTIONAL,
        type,
        typeName,
        extendee: '.chain.Base',
      });
    const base = create(FileDescriptorProtoSchema, {
      name: 'chain/base.proto',
      package: 'chain',
      syntax: 'proto2',
      messageType: [
        create(DescriptorProtoSchema, {
          name: 'Base',
          extensionRange: [create(DescriptorProto_ExtensionRangeSchema, { start: 100, end: 200 })],
        }),
        message('Leaf'),
      ],
    });
    const middle = create(FileDescriptorProtoSchema, {
      name: 'chain/middle.proto',
      package: 'chain',
      syntax: 'proto3',
      dependency: ['chain/base.proto'],
      messageType: [message('Middle', [{ name: 'leaf', number: 1, typeName: '.chain.Leaf' }])],
    });
    const top = create(FileDescriptorProtoSchema, {
      name: 'chain/top.proto',
      package: 'chain',
      syntax: 'proto3',
      dependency: ['chain/middle.proto', 'chain/base.proto'],
      messageType: [
        message('Top', [
          { name: 'middle', number: 1, typeName: '.chain.Middle' },
          { name: 'base', number: 2, typeName: '.chain.Base' },
        ]),
      ],
      service: [
        create(ServiceDescriptorProtoSchema, {
          name: 'TopService',
          method: [
            create(MethodDescriptorProtoSchema, { name: 'Get', inputType: '.chain.Top', outputType: '.chain.Top' }),
          ],
        }),
      ],
    });
    const notes = create(FileDescriptorProtoSchema, {
      name: 'chain/notes.proto',
      package: 'chain',
      syntax: 'proto2',
      dependency: ['chain/base.proto'],
      extension: [extension('note', 150, FieldType.STRING), extension('rank', 100, FieldType.INT32)],
      messageType: [
        create(DescriptorProtoSchema, {
          name: 'Holder',
          extension: [extension('holder', 120, FieldType.MESSAGE, '.chain.Holder')],
        }),
      ],
    });
    let synthetic: Running;
    let client: ReflectionClient;

    before(async function () {
      synthetic = await serveReflectionOnly(descriptorSetOf([base, middle, top, notes]), ['chain.TopService']);
      client = new ReflectionClient(synthetic.address);
    });

    after(function () {
      client?.close();
      synthetic?.server.forceShutdown();
    });

    it('answers a file first, then its transitive dependencies, each once', async function () {
      const session = client.open();
      expect(names(await session.files({ fileByFilename: 'chain/top.proto' }))).to.deep.equal([
        'chain/top.proto',
        'chain/middle.proto',
        'chain/base.proto',
      ]);
      expect(names(await session.files({ fileContainingSymbol: 'chain.TopService.Get' }))).to.deep.equal([
        'chain/top.proto',
        'chain/middle.proto',
        'chain/base.proto',
      ]);
      await session.close();
    });

    it('describes a service whose types come through an import of an import', async function () {
      const description = await client.describe('chain.TopService');
      expect(description.files).to.deep.equal(['chain/top.proto', 'chain/middle.proto', 'chain/base.proto']);
      expect(fieldsOf(description, 'chain.Middle')).to.deep.equal({ leaf: 'chain.Leaf' });
    });

    it('answers the file declaring an extension, top-level or nested', async function () {
      const session = client.open();
      expect(
        names(await session.files({ fileContainingExtension: { containingType: 'chain.Base', extensionNumber: 150 } })),
      ).to.deep.equal(['chain/notes.proto', 'chain/base.proto']);
      expect(
        names(await session.files({ fileContainingExtension: { containingType: 'chain.Base', extensionNumber: 120 } })),
      ).to.deep.equal(['chain/notes.proto', 'chain/base.proto']);
      expect(names(await session.files({ fileContainingSymbol: 'chain.Holder.holder' })).at(0)).to.equal(
        'chain/notes.proto',
      );
      const missing = await rejection(
        session.files({ fileContainingExtension: { containingType: 'chain.Base', extensionNumber: 199 } }),
      );
      expect((missing as ReflectionError).code).to.equal(Code.NOT_FOUND);
      await session.close();
    });

    it('answers the extension numbers of a type: none for a plain message, NOT_FOUND for no message', async function () {
      const session = client.open();
      const base = await session.ask({ allExtensionNumbersOfType: 'chain.Base' });
      expect(base.allExtensionNumbersResponse).to.deep.equal({
        baseTypeName: 'chain.Base',
        extensionNumber: [100, 120, 150],
      });
      expect(
        (await session.ask({ allExtensionNumbersOfType: 'chain.Leaf' })).allExtensionNumbersResponse?.extensionNumber,
      ).to.deep.equal([]);
      expect((await session.ask({ allExtensionNumbersOfType: 'chain.Nothing' })).errorResponse?.errorCode).to.equal(
        Code.NOT_FOUND,
      );
      await session.close();
    });

    it('strict describe refuses a type its file uses without importing it', async function () {
      // Top uses chain.Leaf but imports only middle.proto, which imports base.proto: the
      // registry finds the type, protoc (and so grpcurl) would not.
      const careless = create(FileDescriptorProtoSchema, {
        ...top,
        dependency: ['chain/middle.proto'],
        messageType: [message('Top', [{ name: 'leaf', number: 1, typeName: '.chain.Leaf' }])],
      });
      const server = await serveReflectionOnly(descriptorSetOf([base, middle, careless]), ['chain.TopService']);
      const strict = new ReflectionClient(server.address);
      try {
        const err = await rejection(strict.describe('chain.TopService'));
        expect(err.message).to.equal(
          'chain.Top.leaf uses chain.Leaf from chain/base.proto, which chain/top.proto does not import',
        );
      } finally {
        strict.close();
        server.server.forceShutdown();
      }
    });

    it('refuses a descriptor set whose imports it does not contain', function () {
      expect(() => reflectionServices(descriptorSetOf([top]), () => [])).to.throw(/chain\/middle\.proto/);
    });
  });

  describe('negative control: a server that loses dependency lists', function () {
    // What @grpc/reflection does: storage.proto goes out without `dependency`, so a client
    // never learns it needs timestamp.proto. The strict client must refuse it, or the
    // regression test above would prove nothing.
    const stripped = fileOf(descriptorSet, STORAGE_FILE);
    stripped.dependency = [];
    const alone = descriptorSetOf([stripped]);
    const besideTimestamp = descriptorSetOf([fileOf(descriptorSet, TIMESTAMP_FILE), stripped]);

    for (const [label, set] of [
      ['the stripped file alone', alone],
      ['the stripped file with timestamp.proto also on the server', besideTimestamp],
    ] as const) {
      it(`strict describe throws for ${label}`, async function () {
        const broken = await serveReflectionOnly(set, [STORAGE]);
        const client = new ReflectionClient(broken.address);
        try {
          const err = await rejection(client.describe(STORAGE));
          expect(err.message).to.match(/cannot resolve passthru\.storage\.v1\.StorageArrayService/);
          expect(err.message).to.contain('google.protobuf.Timestamp');
        } finally {
          client.close();
          broken.server.forceShutdown();
        }
      });
    }
  });
});
