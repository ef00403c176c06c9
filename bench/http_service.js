// A tiny HTTP service for the load benchmark: each request allocates a little
// (a 1 KiB Buffer and a small JSON body). Listens on 127.0.0.1 on a free port
// and prints the port on stdout.
//
// With --leak it also leaks, as the services leakscope is pointed at do: every
// 500th request keeps a 16 KiB Buffer (`keepUpload`), every 2000th an open
// deflate stream (zlib's native state, allocated by deflateInit2).
'use strict';
const http = require('http');
const zlib = require('zlib');

const leaking = process.argv.includes('--leak');
const uploads = [];
const streams = [];
let served = 0;

function keepUpload(size) {
  uploads.push(Buffer.alloc(size, 1));
}

function keepStream() {
  streams.push(zlib.createDeflate());
}

const server = http.createServer((req, res) => {
  const scratch = Buffer.alloc(1024, req.url.length);
  const body = JSON.stringify({ url: req.url, checksum: scratch[0] + scratch[1023], at: Date.now() });
  served += 1;
  if (leaking && served % 500 === 0) keepUpload(16 * 1024);
  if (leaking && served % 2000 === 0) keepStream();
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(body);
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
