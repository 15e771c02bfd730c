// Static export of the avgn book: run by `myst build --html` (template.yml: build.render).
//
// mystmd starts its content server, then runs this script in the theme folder with
//   CONTENT_CDN      http://localhost:<port> of the content server
//   BUILD_DIRECTORY  where the HTML goes (<repo>/_build/html, emptied by mystmd)
// No app server is started and nothing is crawled: every page is written here as a
// file at the site root (index.html for the first toc entry, <slug>.html for the
// others) with relative links, so the result works from a web server under any
// path and when opened straight from disk (file://).
//
// Problems (unresolved links/cross-references, unknown node types, assets that
// could not be fetched) are printed to stderr, which mystmd shows as errors, and
// written to <BUILD_DIRECTORY>/../theme-report.json for scripts/build_book.py.
// stdout stays quiet: mystmd only logs it at debug level.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadSite, makeUrls, renderPage } from './lib/render.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const cdn = (process.env.CONTENT_CDN ?? '').replace(/\/$/, '');
const outDir = process.env.BUILD_DIRECTORY;
if (!cdn || !outDir) {
  console.error('render.mjs is run by `myst build --html` (needs CONTENT_CDN and BUILD_DIRECTORY)');
  process.exit(2);
}

function copyDir(src, dst) {
  fs.mkdirSync(dst, { recursive: true });
  for (const entry of fs.readdirSync(src, { withFileTypes: true })) {
    const s = path.join(src, entry.name);
    const d = path.join(dst, entry.name);
    if (entry.isDirectory()) copyDir(s, d);
    else fs.copyFileSync(s, d);
  }
}

const started = Date.now();
const site = await loadSite(cdn);
const urls = makeUrls(site);
fs.mkdirSync(outDir, { recursive: true });

const problems = [];
const assets = new Set();
const written = [];
for (const page of site.pages) {
  if (!page.slug) continue;
  const result = renderPage(site, urls, page.slug, { mode: 'static' });
  const file = path.join(outDir, urls.pageFile(page.slug));
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, result.html);
  written.push({ slug: page.slug, title: page.title, file: urls.pageFile(page.slug), source: site.contents[page.slug].location });
  result.assets.forEach((a) => assets.add(a));
  problems.push(...result.problems);
}

// Public assets (images, notebook downloads) referenced by the pages -> build/
const buildDir = path.join(outDir, 'build');
fs.mkdirSync(buildDir, { recursive: true });
await Promise.all(
  [...assets].map(async (a) => {
    try {
      const resp = await fetch(`${cdn}/${a.split('/').map(encodeURIComponent).join('/')}`);
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      const dst = path.join(buildDir, a);
      fs.mkdirSync(path.dirname(dst), { recursive: true });
      fs.writeFileSync(dst, Buffer.from(await resp.arrayBuffer()));
    } catch (err) {
      problems.push(`asset "${a}" could not be fetched from the content server: ${err.message}`);
    }
  }),
);

// Theme files: public/ (book.css, ...) and KaTeX's stylesheet and fonts from npm.
copyDir(path.join(here, 'public'), outDir);
const katexDist = path.join(here, 'node_modules', 'katex', 'dist');
fs.mkdirSync(path.join(outDir, 'katex'), { recursive: true });
fs.copyFileSync(path.join(katexDist, 'katex.min.css'), path.join(outDir, 'katex', 'katex.min.css'));
copyDir(path.join(katexDist, 'fonts'), path.join(outDir, 'katex', 'fonts'));

const errors = problems.filter((p) => !p.startsWith('warning: '));
const warnings = problems.filter((p) => p.startsWith('warning: ')).map((p) => p.slice('warning: '.length));
const report = { pages: written, assets: [...assets].sort(), errors, warnings, seconds: (Date.now() - started) / 1000 };
fs.writeFileSync(path.join(outDir, '..', 'theme-report.json'), JSON.stringify(report, null, 2));
// stderr is shown by mystmd as errors: only real problems go there (warnings: see the report)
for (const e of errors) console.error(`avgn-theme: ${e}`);
console.log(`avgn-theme: wrote ${written.length} pages, ${assets.size} assets, ${errors.length} errors, ${warnings.length} warnings`);
