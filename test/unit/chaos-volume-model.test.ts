/**
 * The chaos run's oracle for a volume's data (chaos/volume-model.ts): what every sector may
 * hold after acknowledged writes, failed ones and reads that race them. Checked against a
 * plain byte array that plays the disk.
 */
import { expect } from 'chai';
import { payload } from '../../chaos/rng.js';
import { SECTOR, VolumeModel } from '../../chaos/volume-model.js';

function volume(): { model: VolumeModel; disk: Buffer; write(w: number, at: number, length: number): void } {
  const model = new VolumeModel('PTSMtest00001', '600a0980', 8 * 1024 * 1024, { place: { kind: 'retained' }, dataOffset: 0, dataBytes: 64 * SECTOR });
  const disk = Buffer.alloc(64 * SECTOR);
  return { model, disk, write: (w, at, length) => payload(w, at, length).copy(disk, at) };
}

describe('chaos: the volume model (what each sector may hold)', () => {
  it('unwritten sectors must be zeros; acknowledged writes of any alignment must read back exactly', () => {
    const v = volume();
    for (const [w, at, length] of [
      [1, 0, 512],
      [2, 700, 1000],
      [3, 1030, 5],
      [4, 4096, 3 * SECTOR],
    ] as const) {
      v.model.beginWrite(w, at, at + length);
      v.write(w, at, length);
      v.model.ackWrite(w, at, at + length);
    }
    expect(v.model.checkNow(0, v.disk).wrongBytes).to.equal(0);
    const bad = Buffer.from(v.disk);
    bad[1031] ^= 0xff;
    bad[20 * SECTOR] = 1;
    const check = v.model.checkNow(0, bad);
    expect(check.wrongBytes).to.equal(2);
    expect(check.mismatches.map((m) => m.at)).to.deep.equal([1031, 20 * SECTOR]);
    expect(check.mismatches[0]!.writes, 'the acknowledged writes of that sector are named').to.have.members([2, 3]);
    expect(check.mismatches[1]!.writes, 'a sector never written: zeros').to.deep.equal([]);
  });

  it('a write that failed may have left each sector old or new, never anything else, nor half of one', () => {
    const v = volume();
    v.model.beginWrite(1, 0, 4 * SECTOR);
    v.write(1, 0, 4 * SECTOR);
    v.model.ackWrite(1, 0, 4 * SECTOR);
    v.model.beginWrite(2, 100, 3 * SECTOR + 100); // fails: no ack
    const some = Buffer.from(v.disk);
    payload(2, SECTOR, SECTOR).copy(some, SECTOR); // the second sector got it, the others did not
    expect(v.model.checkNow(0, some).wrongBytes).to.equal(0);
    const all = Buffer.from(v.disk);
    payload(2, 100, 3 * SECTOR).copy(all, 100);
    expect(v.model.checkNow(0, all).wrongBytes).to.equal(0);
    const torn = Buffer.from(v.disk);
    payload(2, SECTOR, 200).copy(torn, SECTOR); // 200 bytes of a sector: neither old nor new
    expect(v.model.checkNow(0, torn).wrongBytes).to.be.greaterThan(0);
    // An acknowledged write over it makes its sectors certain again.
    v.model.beginWrite(3, 0, 4 * SECTOR);
    v.model.ackWrite(3, 0, 4 * SECTOR);
    expect(v.model.checkNow(0, some).wrongBytes).to.be.greaterThan(0);
  });

  it('a read in flight may see a write acknowledged meanwhile, or not; after the read, only the new bytes are right', () => {
    const v = volume();
    const read = v.model.beginRead(0, 2 * SECTOR);
    v.model.beginWrite(1, 0, 2 * SECTOR);
    v.model.ackWrite(1, 0, 2 * SECTOR);
    expect(v.model.endRead(read, Buffer.alloc(2 * SECTOR)).wrongBytes, 'old bytes, read before the write landed').to.equal(0);
    expect(v.model.checkNow(0, Buffer.alloc(2 * SECTOR)).wrongBytes, 'old bytes now: lost').to.equal(2 * SECTOR - countZeros(payload(1, 0, 2 * SECTOR)));
  });
});

function countZeros(b: Buffer): number {
  return b.reduce((n, x) => n + (x === 0 ? 1 : 0), 0);
}
