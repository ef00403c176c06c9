const EventEmitter = require('events');
class CachedResult { constructor(k){ this.key = k; this.payload = 'x'.repeat(100) + k; this.at = k*2; } }
const resultCache = new Map();
const bus = new EventEmitter(); bus.setMaxListeners(0);
function handleRequest(i) {
  const req = { id: i, path: '/p' + i };
  bus.on('data', function onData(d) { return req.id + d; });
  resultCache.set('k' + i, new CachedResult(i));
}
const N = +process.argv[2] || 1000;
for (let i = 0; i < N; i++) handleRequest(i);
global.gc && global.gc();
console.log('ready', process.pid);
setInterval(() => {}, 1000);
