/**
 * The hypervisor seam: what the workflow asks of the hypervisor on a node. `SimHypervisor`
 * is the first implementation, answering from the in-process model; a QEMU/KVM driver over
 * QMP plugs in behind the same interface. The workflow records what the hypervisor did
 * (attachments) in the same transaction as the step's journal entry, so an attach that
 * happened but was not journaled is found again by its (controller, location).
 */
import { FailedPreconditionError } from '../common/errors.js';
import type { HostDiskRecord, VmRecord } from './model.js';
import type { HostState } from './state.js';

export interface ScsiAddress {
  controller: number;
  location: number;
}

export interface HostCapabilities {
  hypervisorEnabled: boolean;
  hotAddSupported: boolean;
}

export interface Hypervisor {
  /** What the patent asks the host OS: is the hypervisor enabled, can it hot add/remove disks. */
  capabilities(node: string): HostCapabilities;
  /** Hot-adds a host disk to a running VM's SCSI location. Adding the same disk there again succeeds. */
  hotAdd(vm: VmRecord, address: ScsiAddress, disk: HostDiskRecord): Promise<void> | void;
  /** Hot-removes whatever sits at the location. Removing from an empty location succeeds. */
  hotRemove(vm: VmRecord, address: ScsiAddress): Promise<void> | void;
}

/** Refusals in the words of the hypervisor (FAILED_PRECONDITION), shared by validation and the steps. */
export function checkCanHotPlug(caps: HostCapabilities, vm: VmRecord, node: { name: string; up: boolean }): void {
  if (!node.up) throw new FailedPreconditionError(`node ${node.name}, where VM ${vm.id} runs, is down`, 'NODE_DOWN');
  if (!caps.hypervisorEnabled) {
    throw new FailedPreconditionError(`the hypervisor is not enabled on node ${node.name}: enable it before adding disks to VM ${vm.id}`, 'HYPERVISOR_DISABLED');
  }
  if (!caps.hotAddSupported) {
    throw new FailedPreconditionError(
      `node ${node.name} does not support hot add/remove of SCSI disks: stop VM ${vm.id} or move it to a node that does`,
      'HOT_ADD_UNSUPPORTED',
    );
  }
  if (!vm.running) throw new FailedPreconditionError(`VM ${vm.id} is off: start it first`, 'VM_NOT_RUNNING');
}

export class SimHypervisor implements Hypervisor {
  constructor(private readonly state: HostState) {}

  capabilities(node: string): HostCapabilities {
    const n = this.state.nodes.get(node);
    return { hypervisorEnabled: n?.hypervisorEnabled ?? false, hotAddSupported: n?.hotAddSupported ?? false };
  }

  private check(vm: VmRecord, address: ScsiAddress): void {
    const node = this.state.nodes.get(vm.node);
    if (!node) throw new FailedPreconditionError(`VM ${vm.id} is on unknown node ${vm.node}`, 'NODE_UNKNOWN');
    checkCanHotPlug(this.capabilities(vm.node), vm, node);
    if (address.controller >= vm.controllers || address.location >= vm.locationsPerController) {
      throw new FailedPreconditionError(`VM ${vm.id} has no SCSI location ${address.controller}:${address.location}`, 'NO_SUCH_SCSI_LOCATION');
    }
  }

  hotAdd(vm: VmRecord, address: ScsiAddress, disk: HostDiskRecord): void {
    this.check(vm, address);
    if (disk.node !== vm.node) {
      throw new FailedPreconditionError(`LUN ${disk.serial} is not visible on node ${vm.node}, where VM ${vm.id} runs`, 'HOST_DISK_MISSING');
    }
  }

  hotRemove(vm: VmRecord, address: ScsiAddress): void {
    // Removing from an empty location succeeds, whatever the host can do; so does removing
    // from a VM whose node is down (the VM is gone with it; the record goes with the step).
    if (!this.state.attachments.has(`${vm.id}/${address.controller}/${address.location}`)) return;
    if (this.state.nodes.get(vm.node)?.up === false) return;
    this.check(vm, address);
  }
}
