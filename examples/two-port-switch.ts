// A two-port switch built from the library: two vhost-user sockets, vm0.sock and vm1.sock, in a
// directory; each QEMU guest connects to one (-chardev socket,id=c0,path=DIR/vm0.sock,reconnect=1
// -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0 and guest memory shared).
// Run: node two-port-switch.js DIR. Ctrl-C or SIGTERM closes it.
import * as path from 'node:path';
import { createSwitch, vhostUserPort, type ElasticSwitch } from 'elastic-vhost';

export function twoPortSwitch(dir: string, print: (line: string) => void = console.log): ElasticSwitch {
  const sw = createSwitch({ poolMb: 16, log: (msg) => print(msg) });
  sw.on('portUp', (e) => print(`event: ${e.port} up as connection ${e.connection}`));
  sw.on('portDown', (e) => print(`event: ${e.port} down${e.reason ? ` (${e.reason})` : ''}`));
  sw.on('macLearned', (e) => print(`event: ${e.mac} learned on ${e.port}`));
  sw.on('drops', (e) => print(`event: ${e.dropped} frames dropped ${JSON.stringify(e.reasons)}`));
  for (const name of ['vm0', 'vm1']) sw.addPort(vhostUserPort({ name, path: path.join(dir, `${name}.sock`) }));
  return sw;
}

if (require.main === module) {
  const sw = twoPortSwitch(process.argv[2] ?? '.');
  const stop = (): void => {
    const s = sw.stats().engine.total;
    console.log(`closing: ${s.rxFrames} frames in, ${s.dropped} dropped`);
    void sw.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
