/**
 * Failures past the checks: the database refusing a write after the domain has validated a
 * change. The array must answer with the failure and keep memory, database and data files
 * as they were, as if the call never came.
 */
import { expect } from 'chai';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDomainError } from '../../common/errors.js';
import { StorageArray } from '../../storage-sim/array.js';
import { ArrayStore } from '../../storage-sim/store.js';
import { arrayState } from '../support/array-state.js';

const A = 'iqn.1991-05.com.example:node-a';
const MiB = 1024 * 1024;

/** Makes the store's replay-record write throw, as a full disk or an I/O error would. */
function breakReplayRecords(array: StorageArray): () => void {
  const store = (array as unknown as { store: ArrayStore }).store;
  const original = store.putRequest.bind(store);
  store.putRequest = () => {
    throw new Error('disk I/O error (injected)');
  };
  return () => {
    store.putRequest = original;
  };
}

describe('StorageArray: a store failure after the checks changes nothing', () => {
  let dir: string;
  let array: StorageArray;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'passthru-array-fail-'));
    array = new StorageArray({ dataDir: dir });
    array.createIgroup({ requestId: '', name: 'h', protocol: 'iscsi', osType: 'linux', initiators: [A] });
    array.createLun({ requestId: '', path: '/vol/v/kept', sizeBytes: BigInt(8 * MiB), osType: 'linux', thin: true, comment: '', pool: '' });
    array.mapLun({ requestId: '', lun: '/vol/v/kept', igroup: 'h', lunId: undefined });
    array.writeBlocks({ requestId: '', lun: '/vol/v/kept', initiator: A, offsetBytes: 0n, data: Buffer.alloc(4096, 9) });
  });

  afterEach(() => {
    array.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a CreateLun whose commit fails is not created, in memory or in the database', () => {
    const before = arrayState(array);
    const restore = breakReplayRecords(array);
    expect(() =>
      array.createLun({ requestId: 'c1', path: '/vol/v/new', sizeBytes: BigInt(8 * MiB), osType: 'linux', thin: false, comment: '', pool: '' }),
    ).to.throw(/injected/);
    restore();
    expect(arrayState(array)).to.deep.equal(before);
    array.close();
    array = new StorageArray({ dataDir: dir });
    expect(arrayState(array)).to.deep.equal(before);
  });

  it('a DeleteLun whose commit fails keeps the LUN, its maps and its data file', () => {
    const before = arrayState(array);
    const file = array.data.pathOf(array.getLun('/vol/v/kept').uuid);
    const restore = breakReplayRecords(array);
    expect(() => array.deleteLun({ requestId: 'd1', lun: '/vol/v/kept', force: true })).to.throw(/injected/);
    restore();
    expect(existsSync(file), 'the data file outlives a delete that did not commit').to.equal(true);
    expect(arrayState(array)).to.deep.equal(before);
    expect(array.readBlocks({ lun: '/vol/v/kept', initiator: A, offsetBytes: 0n, lengthBytes: 4096 })).to.deep.equal(Buffer.alloc(4096, 9));
  });

  it('a thin WriteBlocks whose commit fails leaves pool accounting as it was', () => {
    const poolsBefore = array.listPools();
    const restore = breakReplayRecords(array);
    expect(() =>
      array.writeBlocks({ requestId: 'w1', lun: '/vol/v/kept', initiator: A, offsetBytes: BigInt(4 * MiB), data: Buffer.alloc(512, 1) }),
    ).to.throw(/injected/);
    restore();
    expect(array.listPools()).to.deep.equal(poolsBefore);
    expect(array.getLun('/vol/v/kept').usedBytes).to.equal(MiB);
  });

  it('a second array on a data dir in use is refused with DATA_DIR_IN_USE, and the first keeps working', () => {
    let err: unknown;
    try {
      new StorageArray({ dataDir: dir }).close();
    } catch (e) {
      err = e;
    }
    expect(isDomainError(err) && err.kind === 'failed_precondition' && err.reason === 'DATA_DIR_IN_USE', String(err)).to.equal(true);
    expect((err as Error).message).to.match(/in use by another storage-sim/);
    array.createLun({ requestId: '', path: '/vol/v/after', sizeBytes: BigInt(8 * MiB), osType: 'linux', thin: true, comment: '', pool: '' });
    expect(array.getArray().lunCount).to.equal(2);
  });
});
