/**
 * Every LUN the chaos run knows of, by serial: those its workers created or connected, those
 * the administrator put into Available Storage, those a removal left on the array. Each has
 * its VolumeModel (where it is, its volume, what its data area must hold). A LUN on the
 * array that is not here at the end is an orphan; one here that the array lost is a lost
 * acknowledged operation.
 */
import { VolumeModel, type Place } from './volume-model.js';

/** What the guest's mount table and the host say of a disk, as much as the registry needs. */
export interface SeenDisk {
  serial: string;
  naaId: string;
  sizeBytes: number;
  volumeId: string;
  label: string;
  dataOffset: number;
  dataBytes: number;
}

export class Registry {
  private readonly bySerial = new Map<string, VolumeModel>();

  get(serial: string): VolumeModel | undefined {
    return this.bySerial.get(serial);
  }

  /** By serial or NAA id (with or without `naa.`), as a guest names a LUN to connect. */
  find(ref: string): VolumeModel | undefined {
    const direct = this.bySerial.get(ref);
    if (direct) return direct;
    const naa = ref.toLowerCase().replace(/^naa\./, '');
    for (const m of this.bySerial.values()) if (m.naaId.toLowerCase() === naa) return m;
    return undefined;
  }

  add(m: VolumeModel): VolumeModel {
    this.bySerial.set(m.serial, m);
    return m;
  }

  all(): VolumeModel[] {
    return [...this.bySerial.values()];
  }

  where(kind: Place['kind']): VolumeModel[] {
    return this.all().filter((m) => m.place.kind === kind);
  }

  /**
   * The model of a disk a guest has mounted (or is mounting): the known one, or a new one
   * (a disk the run has not seen yet: a create's fresh LUN, all zeros).
   */
  forDisk(d: SeenDisk, place: Place, guestOs: 'windows' | 'linux'): VolumeModel {
    const known = this.bySerial.get(d.serial);
    if (known) return known;
    return this.add(
      new VolumeModel(d.serial, d.naaId, d.sizeBytes, {
        place,
        volumeId: d.volumeId,
        guestOs,
        label: d.label,
        dataOffset: d.dataOffset,
        dataBytes: d.dataBytes,
      }),
    );
  }
}
