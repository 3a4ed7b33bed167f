/**
 * The listen address of our own TCP listeners (--metrics-listen, --portal-listen): read from
 * the flag one way, refused in words that name the flag, and the bound address told back.
 */
import { createServer } from 'node:net';
import { expect } from 'chai';
import { InvalidArgumentError } from '../../common/errors.js';
import { listenTcp, parseListen } from '../../common/listen.js';

describe('listen addresses (common/listen.ts)', () => {
  it('reads host:port, [v6]:port and :port (every interface)', () => {
    expect(parseListen('metrics-listen', '127.0.0.1:9100')).to.deep.equal({ host: '127.0.0.1', port: 9100 });
    expect(parseListen('metrics-listen', '[::1]:0')).to.deep.equal({ host: '::1', port: 0 });
    expect(parseListen('metrics-listen', 'localhost:65535')).to.deep.equal({ host: 'localhost', port: 65535 });
    expect(parseListen('portal-listen', ':3260')).to.deep.equal({ host: undefined, port: 3260 });
  });

  for (const bad of ['127.0.0.1', '127.0.0.1:', '127.0.0.1:http', '127.0.0.1:65536', '127.0.0.1:-1', '']) {
    it(`refuses ${JSON.stringify(bad)} as INVALID_ARGUMENT naming the flag and what it wants`, () => {
      let err: unknown;
      try {
        parseListen('portal-listen', bad);
      } catch (e) {
        err = e;
      }
      expect(err).to.be.instanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).message).to.equal(`--portal-listen ${bad} is not host:port (a port from 0 to 65535; 0 picks a free one)`);
    });
  }

  it('tells back the port the system picked for port 0, and brackets an IPv6 host', async () => {
    const v4 = createServer();
    const v6 = createServer();
    try {
      const a = await listenTcp(v4, { host: '127.0.0.1', port: 0 });
      expect(a.port).to.be.greaterThan(0);
      expect(a.address).to.equal(`127.0.0.1:${a.port}`);
      const b = await listenTcp(v6, { host: '::1', port: 0 });
      expect(b.address).to.equal(`[::1]:${b.port}`);
    } finally {
      v4.close();
      v6.close();
    }
  });

  it('rejects with the system error when the port is taken, and the server is left closed', async () => {
    const first = createServer();
    const second = createServer();
    try {
      const { port } = await listenTcp(first, { host: '127.0.0.1', port: 0 });
      let err: NodeJS.ErrnoException | undefined;
      await listenTcp(second, { host: '127.0.0.1', port }).catch((e: NodeJS.ErrnoException) => (err = e));
      expect(err?.code).to.equal('EADDRINUSE');
      expect(second.listening).to.equal(false);
    } finally {
      first.close();
    }
  });
});
