// JS stacks for the naming benchmark (section 9).
//   node js_stacks.js calls N DEPTH: N Buffer allocations (1 KiB, dropped) each
//     DEPTH JS frames deep; prints the process's CPU ns per allocation (user +
//     system: the probes' traps and programs run in the latter).
//   node js_stacks.js stacks K DEPTH: K distinct generated functions each keep
//     one 1 KiB Buffer, called DEPTH frames deep: K distinct JS stacks.
'use strict';
const vm = require('vm');

const [mode, count, depthArg] = process.argv.slice(2);
const n = Number(count);
const depth = Number(depthArg);
if (!['calls', 'stacks'].includes(mode) || !(n > 0) || !(depth > 0)) {
  console.error('usage: node js_stacks.js calls|stacks N DEPTH');
  process.exit(2);
}

// Calls `leaf` under `levels` more frames of this function.
function descend(levels, leaf) {
  return levels === 0 ? leaf() : descend(levels - 1, leaf);
}

if (mode === 'calls') {
  let bytes = 0;
  const allocate = () => Buffer.allocUnsafeSlow(1024).length;
  const started = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    bytes += descend(depth, allocate);
  }
  const used = process.cpuUsage(started);
  if (bytes !== n * 1024) throw new Error('lost an allocation');
  console.log(((used.user + used.system) * 1000 / n).toFixed(1));
} else {
  // One function per stack, from a script of their own, so each has its
  // own SharedFunctionInfo (and name) and so its own stack.
  let source = '';
  for (let i = 0; i < n; i++) {
    source += `function keep_${i}(kept) { kept.push(Buffer.allocUnsafeSlow(1024)); }\n`;
  }
  source += `[${Array.from({ length: n }, (_, i) => `keep_${i}`).join(',')}]`;
  const keepers = vm.runInThisContext(source, { filename: 'js_stacks_generated.js' });
  const kept = [];
  for (const keep of keepers) descend(depth, () => keep(kept));
  console.log(`kept ${kept.length}`);
}
