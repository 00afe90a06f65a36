// A replica server in its own process, so tests can SIGSTOP/SIGKILL it.
// Started by protocol tests with CIO_REPLICA_CHILD set to a JSON config; it
// prints "listening <port>" once ready. Without that variable (e.g. when a
// test runner picks this file up) it does nothing.
import { ReplicaServer } from '../../src/replica/server';
import { ReplicaStore } from '../../src/replica/store';

interface ChildConfig {
  driveDir: string;
  port: number;
  secretHex: string;
}

async function main(config: ChildConfig): Promise<void> {
  const store = new ReplicaStore(config.driveDir);
  const server = new ReplicaServer({ host: '127.0.0.1', port: config.port, secret: Buffer.from(config.secretHex, 'hex'), stores: new Map([['d1', store]]) });
  const { port } = await server.listen();
  process.stdout.write(`listening ${port}\n`);
  process.on('SIGTERM', () => {
    void server
      .close()
      .then(() => store.close())
      .then(() => process.exit(0));
  });
}

const raw = process.env.CIO_REPLICA_CHILD;
if (raw !== undefined && require.main === module) {
  main(JSON.parse(raw) as ChildConfig).catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
