/**
 * The array's gRPC face: decode, call the domain, encode. No rule of the array lives here.
 */
import { Metadata, status as Code } from '@grpc/grpc-js';
import { EnumCodec } from '../common/enums.js';
import { InvalidArgumentError } from '../common/errors.js';
import type { Logger } from '../common/logging.js';
import type { RpcMetrics } from '../common/metrics.js';
import { chainHooks, implement, type CallHooks } from '../common/rpc.js';
import type { ServiceRegistration } from '../common/service.js';
import {
  FaultInjectionServiceService,
  FaultTiming,
  IgroupProtocol as WireProtocol,
  LunState as WireLunState,
  OsType as WireOsType,
  Provisioning,
  ReservationType as WireReservationType,
  StorageArrayServiceService,
  type Fault as WireFault,
  type Igroup,
  type Lun,
  type LunMap,
  type Pool,
} from '../proto/gen/passthru/storage/v1/storage.js';
import { READS } from './access.js';
import type { StorageArray } from './array.js';
import type { Fault, FaultPlan, FaultTiming as DomainTiming } from './faults.js';
import type { IgroupView, LunMapView, LunState, LunView, PoolView, ReservationType } from './model.js';
import type { IgroupProtocol, OsType } from './rules.js';

export const osTypes = new EnumCodec<OsType>('os_type', [
  [WireOsType.OS_TYPE_WINDOWS, 'windows'],
  [WireOsType.OS_TYPE_HYPER_V, 'hyper_v'],
  [WireOsType.OS_TYPE_LINUX, 'linux'],
  [WireOsType.OS_TYPE_VMWARE, 'vmware'],
]);
export const protocols = new EnumCodec<IgroupProtocol>('protocol', [
  [WireProtocol.IGROUP_PROTOCOL_ISCSI, 'iscsi'],
  [WireProtocol.IGROUP_PROTOCOL_FCP, 'fcp'],
  [WireProtocol.IGROUP_PROTOCOL_MIXED, 'mixed'],
]);
export const provisionings = new EnumCodec<'thin' | 'thick'>('provisioning', [
  [Provisioning.PROVISIONING_THIN, 'thin'],
  [Provisioning.PROVISIONING_THICK, 'thick'],
]);
export const lunStates = new EnumCodec<LunState>('state', [
  [WireLunState.LUN_STATE_ONLINE, 'online'],
  [WireLunState.LUN_STATE_OFFLINE, 'offline'],
]);
export const reservationTypes = new EnumCodec<ReservationType>('type', [
  [WireReservationType.RESERVATION_TYPE_WRITE_EXCLUSIVE, 'write_exclusive'],
  [WireReservationType.RESERVATION_TYPE_EXCLUSIVE_ACCESS, 'exclusive_access'],
  [WireReservationType.RESERVATION_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY, 'write_exclusive_registrants_only'],
  [WireReservationType.RESERVATION_TYPE_EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, 'exclusive_access_registrants_only'],
]);
export const faultTimings = new EnumCodec<DomainTiming>('timing', [
  [FaultTiming.FAULT_TIMING_BEFORE, 'before'],
  [FaultTiming.FAULT_TIMING_AFTER, 'after'],
]);

/** Reads and block I/O log at debug; every mutation logs at info. */
const QUIET = new Set([...READS, 'ReadBlocks', 'WriteBlocks', 'ListFaults']);

export const ARRAY_METHODS: ReadonlySet<string> = new Set(
  Object.values(StorageArrayServiceService).map((d) => d.path.slice(d.path.lastIndexOf('/') + 1)),
);

function toLun(l: LunView): Lun {
  return {
    uuid: l.uuid,
    path: l.path,
    volume: l.volume,
    name: l.name,
    serial: l.serial,
    naaId: l.naaId,
    sizeBytes: BigInt(l.sizeBytes),
    osType: osTypes.toWire(l.osType),
    provisioning: provisionings.toWire(l.thin ? 'thin' : 'thick'),
    state: lunStates.toWire(l.state),
    createTime: new Date(l.createdMs),
    comment: l.comment,
    pool: l.pool,
    usedBytes: BigInt(l.usedBytes),
    mapped: l.mapped,
  };
}

function toIgroup(g: IgroupView): Igroup {
  return {
    name: g.name,
    protocol: protocols.toWire(g.protocol),
    osType: osTypes.toWire(g.osType),
    initiators: g.initiators,
    createTime: new Date(g.createdMs),
    mapCount: g.mapCount,
  };
}

function toMap(m: LunMapView): LunMap {
  return { lunUuid: m.lunUuid, lunPath: m.lunPath, serial: m.serial, igroup: m.igroup, lunId: m.lunId };
}

function toPool(p: PoolView): Pool {
  return {
    name: p.name,
    capacityBytes: BigInt(p.capacityBytes),
    usedBytes: BigInt(p.usedBytes),
    availableBytes: BigInt(p.availableBytes),
    lunCount: p.lunCount,
  };
}

function toFault(f: Fault): WireFault {
  return { ...f, timing: faultTimings.toWire(f.timing) };
}

function thinOf(wire: number): boolean | undefined {
  const p = provisionings.fromWire(wire);
  return p === undefined ? undefined : p === 'thin';
}

/** A map or unmap names one igroup or several, never both ways. */
function oneOrMany(req: { igroup: string; igroups: string[] }): 'one' | 'many' {
  if (req.igroups.length === 0) return 'one';
  if (req.igroup !== '') throw new InvalidArgumentError('igroups', 'give igroup or igroups, not both');
  return 'many';
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Applies the fault plan around each array call (a transport matter, so it lives here). */
function faultHooks(faults: FaultPlan): CallHooks {
  const apply = async (method: string, timing: DomainTiming): Promise<void> => {
    const d = faults.decide(method, timing);
    if (d.delayMs > 0) await sleep(d.delayMs);
    if (d.fail) throw { code: d.fail.code as Code, details: d.fail.message, metadata: new Metadata() };
  };
  return {
    before: (ctx) => (faults.enabled ? apply(ctx.method, 'before') : undefined),
    after: (ctx) => (faults.enabled ? apply(ctx.method, 'after') : undefined),
  };
}

/** Who may call what (storage-sim/access.ts): checked before anything else, faults included. */
export interface AccessHooks {
  array: CallHooks;
  faults: CallHooks;
}

export function storageServices(
  array: StorageArray,
  faults: FaultPlan,
  logger: Logger,
  blockPortal = '',
  metrics?: RpcMetrics,
  access?: AccessHooks,
): ServiceRegistration[] {
  const arrayImpl = implement(
    StorageArrayServiceService,
    {
      getArray: () => {
        const a = array.getArray();
        return {
          ...a,
          minLunSizeBytes: BigInt(a.minLunSizeBytes),
          maxLunSizeBytes: BigInt(a.maxLunSizeBytes),
          pools: a.pools.map(toPool),
          blockPortal,
        };
      },
      listPools: () => ({ pools: array.listPools().map(toPool) }),
      createLun: (req, ctx) => {
        const lun = array.createLun({
          requestId: req.requestId,
          path: req.path,
          sizeBytes: req.sizeBytes,
          osType: osTypes.fromWire(req.osType),
          thin: thinOf(req.provisioning),
          comment: req.comment,
          pool: req.pool,
        });
        ctx.log.lun = lun.path;
        return { lun: toLun(lun) };
      },
      getLun: (req) => ({ lun: toLun(array.getLun(req.lun)) }),
      listLuns: (req) => {
        const page = array.listLuns(req);
        return { luns: page.items.map(toLun), nextPageToken: page.nextPageToken };
      },
      resizeLun: (req) => ({ lun: toLun(array.resizeLun(req)) }),
      setLunState: (req) => ({
        lun: toLun(array.setLunState({ requestId: req.requestId, lun: req.lun, state: lunStates.fromWire(req.state) })),
      }),
      deleteLun: (req, ctx) => {
        ctx.log.lun = req.lun;
        return array.deleteLun(req);
      },
      createIgroup: (req) => ({
        igroup: toIgroup(
          array.createIgroup({
            requestId: req.requestId,
            name: req.name,
            protocol: protocols.fromWire(req.protocol),
            osType: osTypes.fromWire(req.osType),
            initiators: req.initiators,
          }),
        ),
      }),
      getIgroup: (req) => ({ igroup: toIgroup(array.getIgroup(req.name)) }),
      listIgroups: (req) => {
        const page = array.listIgroups(req);
        return { igroups: page.items.map(toIgroup), nextPageToken: page.nextPageToken };
      },
      addInitiators: (req) => ({ igroup: toIgroup(array.addInitiators(req)) }),
      removeInitiators: (req) => ({ igroup: toIgroup(array.removeInitiators(req)) }),
      deleteIgroup: (req) => array.deleteIgroup(req),
      mapLun: (req, ctx) => {
        const maps = oneOrMany(req) === 'many' ? array.mapLunToIgroups({ ...req, lunId: req.lunId }) : [array.mapLun({ ...req, lunId: req.lunId })];
        ctx.log.lun = maps[0]!.lunPath;
        ctx.log.igroup = maps.map((m) => m.igroup).join(',');
        return { map: toMap(maps[0]!), maps: maps.map(toMap) };
      },
      unmapLun: (req) => {
        if (oneOrMany(req) === 'one') {
          const { unmapped } = array.unmapLun(req);
          return { unmapped, unmappedCount: unmapped ? 1 : 0 };
        }
        const { unmappedCount } = array.unmapLunFromIgroups(req);
        return { unmapped: unmappedCount > 0, unmappedCount };
      },
      listLunMaps: (req) => {
        const page = array.listLunMaps(req);
        return { maps: page.items.map(toMap), nextPageToken: page.nextPageToken };
      },
      readBlocks: (req) => ({ data: array.readBlocks(req) }),
      writeBlocks: (req) => array.writeBlocks(req),
      registerReservationKey: (req) => array.registerReservationKey(req),
      reserve: (req) => array.reserve({ ...req, type: reservationTypes.fromWire(req.type) }),
      releaseReservation: (req) => array.releaseReservation(req),
      preemptReservation: (req) => array.preemptReservation({ ...req, type: reservationTypes.fromWire(req.type) }),
      readReservationKeys: (req) => array.readReservationKeys(req.lun),
      readReservation: (req) => {
        const pr = array.readReservation(req.lun);
        return {
          generation: pr.generation,
          reserved: pr.holder !== undefined,
          holderInitiator: pr.holder?.initiator ?? '',
          holderKey: pr.holder?.key ?? '',
          type: pr.holder ? reservationTypes.toWire(pr.holder.type) : 0,
        };
      },
    },
    { logger, quietMethods: QUIET, hooks: access ? chainHooks(access.array, faultHooks(faults)) : faultHooks(faults), metrics },
  );

  const faultImpl = implement(
    FaultInjectionServiceService,
    {
      injectFault: (req) =>
        ({ fault: toFault(faults.inject({ ...req, timing: faultTimings.fromWire(req.timing) ?? 'before' })) }),
      setUnavailable: (req) => {
        const until = faults.setUnavailable(req.durationMs);
        return { unavailableUntil: until === 0 ? undefined : new Date(until) };
      },
      listFaults: () => {
        const l = faults.list();
        return {
          faults: l.faults.map(toFault),
          unavailableUntil: l.unavailableUntilMs === 0 ? undefined : new Date(l.unavailableUntilMs),
        };
      },
      clearFaults: () => ({ cleared: faults.clear() }),
    },
    { logger, quietMethods: QUIET, hooks: access?.faults, metrics },
  );

  return [
    { name: 'passthru.storage.v1.StorageArrayService', definition: StorageArrayServiceService, implementation: arrayImpl },
    { name: 'passthru.storage.v1.FaultInjectionService', definition: FaultInjectionServiceService, implementation: faultImpl },
  ];
}
