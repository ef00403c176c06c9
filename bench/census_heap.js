// A large JS heap for the heap-census benchmark (xtask/src/bench/heap_census.rs).
//
//   node --expose-gc --max-old-space-size=4096 bench/census_heap.js HEAP_MIB PHASE_S GC_EVERY_S
//
// Prints "ready", then reads commands on stdin, one per line:
//   build     fills the heap with HEAP_MIB MiB of live objects (records in a
//             Map and in arrays, strings, closures), then prints "built MIB"
//             with the heap's used size after a full GC;
//   go        for PHASE_S seconds, runs a full GC every GC_EVERY_S s (the
//             census runs after each) while perf_hooks' event-loop delay monitor samples,
//             then prints "delay p50_ms P50 p99_ms P99 max_ms MAX";
//   snapshot  writes a heap snapshot (v8.writeHeapSnapshot, which stops the
//             event loop while it runs) to a scratch file, deletes it, and
//             prints "snapshot pause_s S max_rss_mib M".
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');
const v8 = require('v8');
const { monitorEventLoopDelay } = require('perf_hooks');

const heapMib = Number(process.argv[2] || 1024);
const phaseS = Number(process.argv[3] || 30);
const gcEveryS = Number(process.argv[4] || 10);
const MIB = 1024 * 1024;

class Record {
  constructor(id) {
    this.id = id;
    this.name = 'record-' + id;
    this.tags = [id & 7, id & 15, id & 31];
    this.touched = 0;
  }
}

const byId = new Map();
const batches = [];
const callbacks = [];

function usedMib() {
  return v8.getHeapStatistics().used_heap_size / MIB;
}

function build() {
  let id = 0;
  while (usedMib() < heapMib) {
    const batch = [];
    for (let i = 0; i < 10000; i++, id++) {
      const record = new Record(id);
      byId.set(id, record);
      batch.push(record);
      if ((id & 63) === 0) callbacks.push(() => record.touched++);
    }
    batches.push(batch);
  }
  global.gc();
  return usedMib();
}

function phase(done) {
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  const gcs = setInterval(() => global.gc(), gcEveryS * 1000);
  const tick = setInterval(() => {}, 10);
  setTimeout(() => {
    clearInterval(gcs);
    clearInterval(tick);
    delay.disable();
    const ms = (ns) => (ns / 1e6).toFixed(2);
    done(`delay p50_ms ${ms(delay.percentile(50))} p99_ms ${ms(delay.percentile(99))} max_ms ${ms(delay.max)}`);
  }, phaseS * 1000);
}

function snapshot() {
  const file = path.join(os.tmpdir(), `census-bench-${process.pid}.heapsnapshot`);
  const started = process.hrtime.bigint();
  v8.writeHeapSnapshot(file);
  const pause = Number(process.hrtime.bigint() - started) / 1e9;
  fs.rmSync(file, { force: true });
  return `snapshot pause_s ${pause.toFixed(2)} max_rss_mib ${(process.resourceUsage().maxRSS / 1024).toFixed(0)}`;
}

const say = (line) => process.stdout.write(line + '\n');
readline.createInterface({ input: process.stdin }).on('line', (command) => {
  if (command === 'build') say(`built ${build().toFixed(0)}`);
  else if (command === 'go') phase(say);
  else if (command === 'snapshot') say(snapshot());
});
say('ready');
