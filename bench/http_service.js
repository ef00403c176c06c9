// A tiny HTTP service for the load benchmark: each request allocates a little
// (a 1 KiB Buffer and a small JSON body). Listens on 127.0.0.1 on a free port
// and prints the port on stdout.
'use strict';
const http = require('http');

const server = http.createServer((req, res) => {
  const scratch = Buffer.alloc(1024, req.url.length);
  const body = JSON.stringify({ url: req.url, checksum: scratch[0] + scratch[1023], at: Date.now() });
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(body);
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
