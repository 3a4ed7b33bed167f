/**
 * common/rpc.ts implement(): what every passthru handler relies on. Domain errors keep their
 * status, message and details; anything else is INTERNAL with a generic text (no stack to
 * the client); hooks run around calls; a server stream that fails ends with the status.
 */
import { credentials, Server, ServerCredentials, status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { NotFoundError, ResourceExhaustedError } from '../../common/errors.js';
import { silentLogger } from '../../common/logging.js';
import { implement, type CallHooks } from '../../common/rpc.js';
import { statusDetails } from '../../common/status.js';
import {
  HealthCheckResponse_ServingStatus as Serving,
  HealthClient,
  HealthService,
  type HealthCheckResponse,
} from '../../proto/gen/grpc/health/v1/health.js';

describe('common/rpc implement(): handlers, errors and hooks over a real server', () => {
  let server: Server;
  let client: HealthClient;
  let handled: string[];
  let hookFailure: { when: 'before' | 'after'; service: string } | undefined;

  const hooks: CallHooks = {
    before: () => {
      if (hookFailure?.when === 'before') throw new ResourceExhaustedError('hook refused the call', 'RATE_LIMITED', 1500);
    },
    after: () => {
      if (hookFailure?.when === 'after') throw new ResourceExhaustedError('hook refused the reply', 'RATE_LIMITED');
    },
  };

  before(async () => {
    server = new Server();
    server.addService(
      HealthService,
      implement(
        HealthService,
        {
          check: async (req) => {
            handled.push(req.service);
            if (req.service === 'missing') throw new NotFoundError('VM', 'vm9');
            if (req.service === 'bug') throw new Error('secret internal detail at /src/x.ts:1');
            return { status: Serving.SERVING };
          },
          list: () => ({ statuses: {} }),
          watch: async (req, _ctx, send) => {
            handled.push(req.service);
            send({ status: Serving.SERVING });
            send({ status: Serving.NOT_SERVING });
            if (req.service === 'fails-midway') throw new NotFoundError('operation', 'op-1');
          },
        },
        { logger: silentLogger(), hooks },
      ),
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    client = new HealthClient(`127.0.0.1:${port}`, credentials.createInsecure());
  });

  beforeEach(() => {
    handled = [];
    hookFailure = undefined;
  });

  after(() => {
    client.close();
    server.forceShutdown();
  });

  const check = (service: string): Promise<{ err: ServiceError | null; res?: HealthCheckResponse }> =>
    new Promise((resolve) => client.check({ service }, (err, res) => resolve({ err, res })));

  const watch = (service: string): Promise<{ messages: HealthCheckResponse[]; err?: ServiceError }> =>
    new Promise((resolve) => {
      const messages: HealthCheckResponse[] = [];
      const call = client.watch({ service });
      call.on('data', (m: HealthCheckResponse) => messages.push(m));
      call.on('error', (err: ServiceError) => resolve({ messages, err }));
      call.on('end', () => resolve({ messages }));
    });

  it('a handler result is the reply', async () => {
    const { err, res } = await check('ok');
    expect(err).to.equal(null);
    expect(res?.status).to.equal(Serving.SERVING);
  });

  it('a domain error keeps its status and message and carries ErrorInfo and ResourceInfo details', async () => {
    const { err } = await check('missing');
    expect(err?.code).to.equal(Code.NOT_FOUND);
    expect(err?.details).to.equal('VM "vm9" does not exist');
    expect(statusDetails(err!).reason).to.equal('VM_NOT_FOUND');
  });

  it('any other error is INTERNAL with a generic message: nothing of it reaches the client', async () => {
    const { err } = await check('bug');
    expect(err?.code).to.equal(Code.INTERNAL);
    expect(err?.details).to.equal('internal error; the server log has the details');
    expect(JSON.stringify(err?.metadata.getMap())).to.not.include('secret');
  });

  it('a before hook that throws refuses the call without running the handler, with RetryInfo', async () => {
    hookFailure = { when: 'before', service: 'ok' };
    const { err } = await check('ok');
    expect(err?.code).to.equal(Code.RESOURCE_EXHAUSTED);
    expect(statusDetails(err!).retryAfterMs).to.equal(1500);
    expect(handled).to.deep.equal([]);
  });

  it('an after hook that throws replaces the reply with its status once the handler ran', async () => {
    hookFailure = { when: 'after', service: 'ok' };
    const { err } = await check('ok');
    expect(err?.code).to.equal(Code.RESOURCE_EXHAUSTED);
    expect(handled).to.deep.equal(['ok']);
  });

  it('a server stream sends each message, then ends cleanly', async () => {
    const { messages, err } = await watch('fine');
    expect(err).to.equal(undefined);
    expect(messages.map((m) => m.status)).to.deep.equal([Serving.SERVING, Serving.NOT_SERVING]);
  });

  it('a server stream that fails midway delivers what was sent, then the domain status', async () => {
    const { messages, err } = await watch('fails-midway');
    expect(messages.map((m) => m.status)).to.deep.equal([Serving.SERVING, Serving.NOT_SERVING]);
    expect(err?.code).to.equal(Code.NOT_FOUND);
    expect(err?.details).to.equal('operation "op-1" does not exist');
  });
});
