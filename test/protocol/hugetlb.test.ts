// Guest memory on 2 MiB huge pages (hugetlbfs, as QEMU's memory-backend-file on /dev/hugepages or
// memory-backend-memfd,hugetlb=on, and DPDK's hugepage memory): the back-end maps it (its guard
// pages aligned to the file's page size: a 4 KiB-aligned guard once made every such mmap fail with
// EINVAL) and frames pass both ways. The test reserves the huge pages itself and gives them back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { ethFrame, MAC_A, MAC_B, netHdr, packet, receiveN, sendPacket, seqOf, startPair } from './helpers';

const NR = '/proc/sys/vm/nr_hugepages';
const HUGE = 2 << 20;

/** the mappings of files named like name in /proc/self/maps, each with whether PROT_NONE pages sit right before and after it */
function guardedMappings(name: string): { range: string; guarded: boolean }[] {
  const lines = fs.readFileSync('/proc/self/maps', 'utf8').trim().split('\n').map((l) => {
    const [range, perms] = l.split(/\s+/);
    const [start, end] = range.split('-').map((x) => parseInt(x, 16));
    return { range, perms, start, end, line: l };
  });
  const out: { range: string; guarded: boolean }[] = [];
  lines.forEach((m, i) => {
    if (!m.line.includes(name)) return;
    const before = lines[i - 1];
    const after = lines[i + 1];
    const guarded = !!before && !!after && before.end === m.start && before.perms.startsWith('---') && after.start === m.end && after.perms.startsWith('---');
    out.push({ range: m.range, guarded });
  });
  return out;
}

function freeHugePages(): number {
  const m = /HugePages_Free:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) : 0;
}

/** Reserves n more 2 MiB pages; returns how to give them back, or a reason they cannot be had. */
function reserve(n: number): { restore: () => void } | string {
  const size = /Hugepagesize:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  if (!size || Number(size[1]) * 1024 !== HUGE) return 'the default huge page size is not 2 MiB';
  let old: string;
  try {
    old = fs.readFileSync(NR, 'utf8').trim();
    fs.writeFileSync(NR, String(Number(old) + n));
  } catch (e) {
    return `cannot reserve huge pages (${(e as Error).message})`;
  }
  const restore = () => fs.writeFileSync(NR, old);
  if (freeHugePages() < n) {
    restore();
    return `the kernel gave fewer than ${n} free huge pages (memory too fragmented?)`;
  }
  return { restore };
}

test('guest memory on 2 MiB huge pages (MFD_HUGETLB): mapped by the back-end, frames pass both ways', async (t) => {
  const r = reserve(8);
  if (typeof r === 'string') {
    console.log(`# skipped: ${r}`);
    t.skip(r);
    return;
  }
  try {
    const ram = [{ gpa: 0, size: 2 * HUGE, hugetlb: true }];
    const { a, b, log, done } = await startPair({ ram }, { ram });
    try {
      const fd = a.fe.ram!.regions[0].fd;
      assert.equal(fs.fstatSync(fd).blksize, HUGE, 'the front-end memory really is on huge pages');
      assert.ok(a.port.session!.mem.list()[0].windows[0].length >= 2 * HUGE);
      // every mapping of it (front-end and back-end, both guests) between PROT_NONE guard pages:
      // the guards are aligned to the huge pages, or the fixed mapping would have failed (EINVAL)
      const maps = guardedMappings('memfd:guest-ram-0');
      assert.equal(maps.length, 4, JSON.stringify(maps));
      assert.ok(maps.every((m) => m.guarded), JSON.stringify(maps));
      for (let i = 0; i < 20; i++) {
        await sendPacket(a, packet(netHdr(12), ethFrame(1000 + i, i, MAC_A, MAC_B)));
        await sendPacket(b, packet(netHdr(12), ethFrame(600, 100 + i, MAC_B, MAC_A)));
      }
      const atB = await receiveN(b, 20);
      const atA = await receiveN(a, 20);
      assert.deepEqual(atB.map((p) => seqOf(p.frame)), Array.from({ length: 20 }, (_, i) => i));
      assert.deepEqual(atA.map((p) => seqOf(p.frame)), Array.from({ length: 20 }, (_, i) => 100 + i));
      assert.deepEqual(atB[7].frame, ethFrame(1007, 7, MAC_A, MAC_B));
      assert.ok(!log.lines.some((l) => /EINVAL/.test(l)));
    } finally {
      await done({ noErrors: true });
    }
  } finally {
    r.restore();
  }
});
