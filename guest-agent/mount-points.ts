/**
 * The guest's own rules for where a volume may be mounted, on top of the syntax that
 * common/drive-path.ts checks (drive letters D:-Z:, no `..`, reserved names, forbidden
 * characters, length; absolute Linux paths, not `/`): what this guest has mounted decides.
 * The host checks again; the guest never trusts itself alone.
 */
import { isInside, parseDrivePath, volumeOf, type DrivePath, type GuestOsName } from '../common/drive-path.js';
import { FailedPreconditionError } from '../common/errors.js';
import type { MountTable } from './state.js';

/** Mount paths this guest has mounted or is mounting (not removing). */
function occupied(table: MountTable): string[] {
  return [...table.mounts.map((m) => m.path), ...table.pending.filter((p) => p.kind !== 'remove').map((p) => p.mountPath)];
}

/** The mounts (and mounts under way) that sit inside the volume or folder at `mount`. */
export function mountsInside(os: GuestOsName, mount: DrivePath, table: MountTable): string[] {
  return [...new Set(occupied(table).filter((p) => isInside(parseDrivePath(os, p), mount)))];
}

/**
 * Throws unless a new volume may be mounted at `mount` (a path not yet in the table):
 * a Windows folder mount point sits on C: or on a volume passthru mounted here; and no
 * mount sits inside it already (on Windows a folder mount point must be an empty folder;
 * on Linux the new mount would hide them). Nesting a mount inside another is allowed.
 */
export function checkMountPoint(os: GuestOsName, mount: DrivePath, table: MountTable): void {
  const volume = volumeOf(mount);
  if (volume && volume.key !== 'C:' && !table.mounts.some((m) => m.key === volume.key)) {
    const underWay = table.pending.some((p) => p.kind !== 'remove' && p.key === volume.key);
    throw new FailedPreconditionError(
      `${mount.path} is a folder mount point on ${volume.path}, but no passthru volume is mounted at ${volume.path} in this guest${underWay ? ' (its mount has not finished)' : ''}: mount a disk at ${volume.path} first, or use a folder on C: such as C:\\mt1`,
      'MOUNT_VOLUME_MISSING',
    );
  }
  // Nor inside a path whose own create or connect has not mounted its volume yet: finishing it would mount a
  // volume over this one, and giving it up would be refused while this one sits inside. (Found
  // by the chaos run: on Linux /srv/d1 could be made while a connect of /srv was unfinished,
  // and the removal that gave /srv up was then refused, its disk left attached and unrecorded.)
  const under = table.pending.find((p) => p.kind !== 'remove' && p.phase !== 'mounted' && isInside(mount, parseDrivePath(os, p.mountPath)));
  if (under) {
    throw new FailedPreconditionError(
      `${mount.path} is inside ${under.mountPath}, whose \`disk ${under.kind}\` has not finished: a volume mounted there would hide it; finish that request or remove ${under.mountPath} first`,
      'MOUNT_POINT_PENDING',
    );
  }
  const inside = mountsInside(os, mount, table);
  if (inside.length > 0) {
    const why = os === 'windows' ? 'a folder mount point must be an empty folder' : 'a volume mounted there would hide them';
    throw new FailedPreconditionError(`${inside.join(', ')} ${inside.length === 1 ? 'is' : 'are'} mounted inside ${mount.path}: ${why}; choose another mount path`, 'MOUNT_POINT_NOT_EMPTY');
  }
}
