import { expect } from 'chai';
import { ReflectionClient, type ReflectionVersion } from '../support/reflection-client.js';
import { startStorageSim, tempDir, type ServiceProcess } from '../support/processes.js';

const SERVED = [
  'passthru.storage.v1.StorageArrayService',
  'passthru.storage.v1.FaultInjectionService',
  'passthru.diag.v1.DiagnosticsService',
  'grpc.health.v1.Health',
  'grpc.reflection.v1.ServerReflection',
  'grpc.reflection.v1alpha.ServerReflection',
];

describe('storage-sim process: server reflection as grpcurl uses it', () => {
  const dir = tempDir('passthru-reflect-');
  let sim: ServiceProcess;

  before(async () => {
    sim = await startStorageSim(dir.path);
  });

  after(async () => {
    await sim?.stop();
    dir.remove();
  });

  for (const version of ['v1', 'v1alpha'] as ReflectionVersion[]) {
    it(`${version}: lists exactly the array, fault, diagnostics, health and both reflection services`, async () => {
      const client = new ReflectionClient(sim.address, version);
      try {
        expect((await client.listServices()).sort()).to.deep.equal([...SERVED].sort());
      } finally {
        client.close();
      }
    });

    it(`${version}: describes every served service strictly, fetching each import by file name`, async () => {
      const client = new ReflectionClient(sim.address, version);
      try {
        for (const name of SERVED) {
          const d = await client.describe(name);
          expect(d.name, name).to.equal(name);
          expect(d.methods.length, `${name} methods`).to.be.greaterThan(0);
        }
        const array = await client.describe('passthru.storage.v1.StorageArrayService');
        expect(array.methods.map((m) => m.name)).to.include.members(['CreateLun', 'MapLun', 'WriteBlocks', 'PreemptReservation']);
        expect(array.files).to.include('google/protobuf/timestamp.proto');
        const lun = array.messages.find((m) => m.name === 'passthru.storage.v1.Lun');
        expect(lun?.fields.find((f) => f.name === 'create_time')?.type).to.equal('google.protobuf.Timestamp');
      } finally {
        client.close();
      }
    });
  }
});
