/**
 * Who may do what on the array, by the role in the caller's client certificate (mTLS; the
 * roles are in common/identity.ts):
 *
 *   reads (Get*, List*, ReadReservation*)            any certificate with a passthru role
 *   changes (LUNs, igroups, maps)                    host-node or admin
 *   block I/O and reservation commands               host-node, as the initiator its certificate
 *     (ReadBlocks, WriteBlocks, RegisterReservationKey, binds: an empty `initiator` field means
 *      Reserve, ReleaseReservation, PreemptReservation) that one, another is PERMISSION_DENIED
 *   FaultInjectionService                            admin
 *   block portal LOGIN                               host-node, as its own initiator only
 *
 * So masking and fencing cannot be bypassed by naming another node's initiator. Without TLS
 * none of this runs: every caller may do everything and the initiator field is trusted (the
 * development mode, plaintext on loopback).
 */
import { PermissionDeniedError } from '../common/errors.js';
import { requireRole, ROLES, type PeerIdentity } from '../common/identity.js';
import type { CallHooks } from '../common/rpc.js';
import { parseInitiator } from './rules.js';

/** StorageArrayService calls that change nothing (any role may make them). */
export const READS: ReadonlySet<string> = new Set([
  'GetArray',
  'ListPools',
  'GetLun',
  'ListLuns',
  'GetIgroup',
  'ListIgroups',
  'ListLunMaps',
  'ReadReservationKeys',
  'ReadReservation',
]);

/** Calls that act as an initiator: the caller's own, bound in its certificate. */
export const AS_INITIATOR: ReadonlySet<string> = new Set([
  'ReadBlocks',
  'WriteBlocks',
  'RegisterReservationKey',
  'Reserve',
  'ReleaseReservation',
  'PreemptReservation',
]);

/**
 * The initiator a host node acts as: its certificate's. A request naming another is refused;
 * one naming none gets the node's own. Returns it in the array's canonical spelling.
 */
export function ownInitiator(what: string, id: PeerIdentity | undefined, named: string): string {
  const who = requireRole(what, ['host-node'], id);
  const mine = parseInitiator('initiator', who.initiator!).name;
  if (named.trim() === '') return mine;
  if (parseInitiator('initiator', named).name !== mine) {
    throw new PermissionDeniedError(
      `${what} as initiator ${named} refused: the certificate of host node ${who.node} binds ${mine}, and a node acts only as itself (leave initiator empty to mean it)`,
      'INITIATOR_NOT_YOURS',
    );
  }
  return mine;
}

/** Checks StorageArrayService calls; an initiator-bound request left empty gets the caller's. */
export function arrayAccessHooks(): CallHooks {
  return {
    before: (ctx, request) => {
      if (READS.has(ctx.method)) requireRole(ctx.method, ROLES, ctx.identity);
      else if (AS_INITIATOR.has(ctx.method)) {
        const req = request as { initiator: string };
        req.initiator = ownInitiator(ctx.method, ctx.identity, req.initiator);
      } else requireRole(`${ctx.method} changes the array: it`, ['host-node', 'admin'], ctx.identity);
    },
  };
}

/** FaultInjectionService: administrators only. */
export function faultAccessHooks(): CallHooks {
  return { before: (ctx) => void requireRole(`FaultInjectionService.${ctx.method}`, ['admin'], ctx.identity) };
}
