import type { ServiceDefinition, UntypedServiceImplementation } from '@grpc/grpc-js';

/** One gRPC service as the server bootstrap adds it: its full name, wire definition and handlers. */
export interface ServiceRegistration {
  /** Fully qualified, e.g. passthru.storage.v1.StorageArrayService (what reflection lists). */
  name: string;
  definition: ServiceDefinition;
  implementation: UntypedServiceImplementation;
}
