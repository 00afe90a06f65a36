// Cutting the network between two loopback addresses of a test cluster, with
// an nftables table of the test's own (named after it, deleted afterwards).
// Only packets between the two given addresses are dropped.
import { execFile } from 'node:child_process';

function nft(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('nft', args, (err, _out, stderr) => (err ? reject(new Error(`nft ${args.join(' ')}: ${stderr || err.message}`)) : resolve()));
  });
}

export class NetCut {
  private active = false;

  constructor(private readonly table: string) {
    if (!/^[a-z0-9_]+$/.test(table)) throw new Error(`bad table name ${table}`);
  }

  /** Drop every packet between `a` and `b`, both ways. */
  async cut(a: string, b: string): Promise<void> {
    await this.separate(a, [b]);
  }

  /** Drop every TCP packet to or from a local port (e.g. one node's etcd port). */
  async cutPort(port: number): Promise<void> {
    await this.begin();
    await nft(['add', 'rule', 'ip', this.table, 'out', 'ip', 'daddr', '127.0.0.0/8', 'tcp', 'dport', String(port), 'drop']);
    await nft(['add', 'rule', 'ip', this.table, 'out', 'ip', 'daddr', '127.0.0.0/8', 'tcp', 'sport', String(port), 'drop']);
  }

  /** Cut `ip` off from every address in `others` (its etcd link stays). */
  async separate(ip: string, others: readonly string[]): Promise<void> {
    await this.begin();
    for (const other of others) {
      await nft(['add', 'rule', 'ip', this.table, 'out', 'ip', 'saddr', ip, 'ip', 'daddr', other, 'drop']);
      await nft(['add', 'rule', 'ip', this.table, 'out', 'ip', 'saddr', other, 'ip', 'daddr', ip, 'drop']);
    }
  }

  /** Cut `ip` off from every address in `others` and from the local TCP port `etcdPort` (its etcd endpoint). */
  async isolate(ip: string, others: readonly string[], etcdPort: number): Promise<void> {
    await this.separate(ip, others);
    for (const dir of ['dport', 'sport']) await nft(['add', 'rule', 'ip', this.table, 'out', 'ip', 'daddr', '127.0.0.0/8', 'tcp', dir, String(etcdPort), 'drop']);
  }

  /** A fresh table with an empty output chain (the previous cut healed). */
  private async begin(): Promise<void> {
    await this.heal();
    await nft(['add', 'table', 'ip', this.table]);
    this.active = true;
    await nft(['add', 'chain', 'ip', this.table, 'out', '{ type filter hook output priority 0 ; }']);
  }

  async heal(): Promise<void> {
    if (!this.active) return;
    await nft(['delete', 'table', 'ip', this.table]).catch(() => undefined);
    this.active = false;
  }
}
