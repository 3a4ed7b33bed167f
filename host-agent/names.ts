/**
 * Names an administrator sees (patent style) and names on the array (safe characters only,
 * traceable to the operation). Cluster names must be unique: a second mount that would
 * produce the same name gets a numeric suffix, chosen once and journaled.
 */
import { randomBytes } from 'node:crypto';
import { namePart, safeToken, type DrivePath } from '../common/drive-path.js';

export const CLUSTER_GROUP = 'Cluster Group';
export const AVAILABLE_STORAGE = 'Available Storage';

export function unique(base: string, taken: (name: string) => boolean): string {
  if (!taken(base)) return base;
  for (let n = 2; ; n++) {
    const name = `${base} (${n})`;
    if (!taken(name)) return name;
  }
}

export const diskResourceName = (vmId: string, mount: DrivePath): string => `Disk VM ${vmId} MP ${namePart(mount)}`;
export const temporaryGroupName = (vmId: string, mount: DrivePath): string => `Disk VM ${vmId} MP ${namePart(mount)} Group`;
export const vmGroupName = (vmName: string): string => `Virtual Machine ${vmName}`;
/** Cluster Disk N, the lowest N free, as a failover cluster names the disks it adds. */
export function availableDiskName(taken: (name: string) => boolean): string {
  for (let n = 1; ; n++) if (!taken(`Cluster Disk ${n}`)) return `Cluster Disk ${n}`;
}

/** Operation ids: sortable by creation time, safe in LUN names and request ids. */
export function newOperationId(): string {
  return `op-${Date.now().toString(36).padStart(9, '0')}${randomBytes(6).toString('hex')}`;
}

/** The shape newOperationId gives (a page token is one, so a forged token is told apart). */
export const OPERATION_ID_RE = /^op-[0-9a-z]{9}[0-9a-f]{12}$/;

/** /vol/<volume>/<vm id>_<mount>_<op id>: unique per operation, so only that operation can have made it. */
export function lunPathFor(volume: string, vmId: string, mount: DrivePath, opId: string): string {
  return `/vol/${volume}/${vmId.replace(/-/g, '_')}_${safeToken(mount)}_${opId.replace(/-/g, '_')}`;
}

const MAX_COMMENT = 254;

/** The LUN's comment: cluster, VM, mount and operation, so an orphan can always be traced. */
export function lunComment(cluster: string, vmId: string, mount: DrivePath, opId: string): string {
  const head = `passthru cluster=${cluster} vm=${vmId} op=${opId} mount=`;
  const room = MAX_COMMENT - head.length;
  if (mount.path.length <= room) return head + mount.path;
  // Cut by code point, never inside a surrogate pair.
  let cut = '';
  for (const ch of mount.path) {
    if (cut.length + ch.length > room - 3) break;
    cut += ch;
  }
  return `${head}${cut}...`;
}
