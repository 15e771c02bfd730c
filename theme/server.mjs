// Preview server of the avgn book: run by `myst start` (template.yml: build.start).
//
// mystmd runs it in the theme folder with HOST, PORT, CONTENT_CDN_PORT (its content
// server), MODE (`app`) and BASE_URL, and waits for a line holding http://…:PORT.
// Pages are rendered on every request from the content server (same renderer and
// same URLs as the static build), and reload when mystmd reports a change.
// `myst build --html` does not use this server: see render.mjs.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadSite, makeUrls, renderPage, escapeHtml } from './lib/render.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const host = process.env.HOST || 'localhost';
const port = Number(process.env.PORT || 3000);
const cdnPort = Number(process.env.CONTENT_CDN_PORT || 3100);
const cdn = `http://${host === '0.0.0.0' ? 'localhost' : host}:${cdnPort}`;
const mode = process.env.MODE || 'app';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.svg': 'image/svg+xml',
  '.webp': 'image/webp',
  '.woff2': 'font/woff2',
  '.woff': 'font/woff',
  '.ttf': 'font/ttf',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
};

function sendFile(res, root, rel) {
  const file = path.resolve(root, rel);
  if (!file.startsWith(path.resolve(root) + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) return false;
  res.writeHead(200, { 'content-type': TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
  return true;
}

async function proxy(res, url) {
  const upstream = await fetch(url);
  res.writeHead(upstream.status, { 'content-type': upstream.headers.get('content-type') ?? 'application/octet-stream' });
  res.end(Buffer.from(await upstream.arrayBuffer()));
}

function notFound(res, what) {
  res.writeHead(404, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!DOCTYPE html><title>Not found</title><p>Not found: ${escapeHtml(what)}</p><p><a href="index.html">Back to the book</a></p>`);
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, `http://${req.headers.host || 'localhost'}`);
    let p = decodeURIComponent(url.pathname);
    if (p.startsWith('/build/')) return await proxy(res, `${cdn}/${p.slice('/build/'.length)}`);
    if (p.startsWith('/katex/')) {
      if (sendFile(res, path.join(here, 'node_modules', 'katex', 'dist'), p.slice('/katex/'.length))) return;
      return notFound(res, p);
    }
    if (p !== '/' && !p.endsWith('.html') && sendFile(res, path.join(here, 'public'), p.slice(1))) return;

    const site = await loadSite(cdn);
    const urls = makeUrls(site);
    if (p === '/' || p === '') p = '/index.html';
    const page = site.pages.find((pg) => pg.slug && (`/${urls.pageFile(pg.slug)}` === p || `/${pg.slug}` === p.replace(/\/$/, '')));
    if (!page) return notFound(res, p);
    const { html, problems } = renderPage(site, urls, page.slug, { mode, cdnPort });
    for (const problem of problems) console.error(`avgn-theme: ${problem}`);
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(html);
  } catch (err) {
    console.error(`avgn-theme: ${req.url}: ${err.stack || err}`);
    res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
    res.end(String(err.stack || err));
  }
});

server.listen(port, host === 'localhost' ? undefined : host, () => {
  // mystmd waits for this line (it must contain http://…:PORT)
  console.log(`avgn book theme server ready: http://${host}:${port}`);
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
