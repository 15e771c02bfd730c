// Shared renderer of the avgn offline book theme.
//
// Turns the content that mystmd's content server provides (config.json and one
// /content/<slug>.json per page, each holding a MyST AST in `mdast`) into plain
// HTML pages. Used by render.mjs (static `myst build --html`) and server.mjs
// (`myst start`).
//
// MyST nodes are turned into HTML with `myst-to-html` (mystToHast) and the
// overrides in `handlers` below: maths arrives pre-rendered by KaTeX in the
// AST (`node.html`), notebook cells are `block` nodes holding a `code` node and
// an `outputs` node with `output` children whose `jupyter_data` is an nbformat
// output (mime bundles; images point to public assets through `path`).

import { mystToHast } from 'myst-to-html';
import { toHtml } from 'hast-util-to-html';
import hljs from 'highlight.js/lib/common';

// ---------------------------------------------------------------------------
// Loading the site from the content server
// ---------------------------------------------------------------------------

async function fetchOk(url, kind = 'json') {
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`GET ${url} -> HTTP ${resp.status}`);
  return kind === 'json' ? resp.json() : kind === 'text' ? resp.text() : Buffer.from(await resp.arrayBuffer());
}

/** slug -> path of the page relative to the site root, as mystmd writes them ("a.b" -> "a/b"). */
export function slugToUrl(slug) {
  return slug.replace(/\./g, '/');
}

/**
 * Fetch config.json and every page of the (first) project.
 * Returns { config, project, title, pages: [{slug, title, level, index, group}], contents: {slug: json} }.
 */
export async function loadSite(cdn) {
  const config = await fetchOk(`${cdn}/config.json`);
  const project = (config.projects ?? [])[0];
  if (!project) throw new Error('config.json has no project: is myst.yml missing its `project:` section?');
  const pages = [];
  const contents = {};
  const indexSlug = project.index ?? 'index';
  const entries = [{ slug: indexSlug, level: 1, isIndex: true }, ...(project.pages ?? [])];
  let group;
  for (const entry of entries) {
    if (!entry.slug) {
      // a toc entry with only a title: a group heading in the sidebar
      group = entry.title;
      pages.push({ heading: true, title: entry.title, level: entry.level ?? 1 });
      continue;
    }
    const content = await fetchOk(`${cdn}/content/${entry.slug}.json`);
    await inlineLargeOutputs(cdn, content.mdast);
    contents[entry.slug] = content;
    pages.push({
      slug: entry.slug,
      title: content.frontmatter?.title ?? entry.title ?? entry.slug,
      shortTitle: content.frontmatter?.short_title ?? entry.short_title,
      level: entry.level ?? 1,
      isIndex: !!entry.isIndex,
      group,
    });
  }
  return { config, project, title: project.title ?? config.title ?? 'Book', pages, contents };
}

// Large text outputs are stored by mystmd as files (`path`, no `content`): read them back.
async function inlineLargeOutputs(cdn, tree) {
  const jobs = [];
  walk(tree, (node) => {
    if (node.type !== 'output') return;
    const data = node.jupyter_data?.data;
    if (!data) return;
    for (const [mime, bundle] of Object.entries(data)) {
      if (bundle && bundle.content === undefined && bundle.path && isTextMime(mime)) {
        jobs.push(fetchOk(`${cdn}${bundle.path}`, 'text').then((text) => { bundle.content = text; }));
      }
    }
  });
  await Promise.all(jobs);
}

function isTextMime(mime) {
  return mime.startsWith('text/') || mime === 'image/svg+xml' || mime.endsWith('+json') || mime === 'application/json';
}

function walk(node, fn) {
  if (!node || typeof node !== 'object') return;
  fn(node);
  if (Array.isArray(node.children)) node.children.forEach((c) => walk(c, fn));
}

// ---------------------------------------------------------------------------
// URL schemes
// ---------------------------------------------------------------------------

/**
 * How pages and assets are addressed: every page is a file at the site root
 * (index.html for the first toc entry, <slug>.html for the others), public
 * assets (images, notebook downloads) under build/, theme files at the root.
 * All URLs are relative, so the site works from any web server path and when
 * opened straight from disk (file://).
 */
export function makeUrls(site) {
  const indexSlug = site.pages.find((p) => p.isIndex)?.slug ?? 'index';
  // flat on purpose (a nested slug "a.b" stays "a.b.html"), so relative URLs are the same on every page
  const pageFile = (slug) => (slug === indexSlug ? 'index.html' : `${slug}.html`);
  return {
    pageFile,
    page: (slug) => pageFile(slug),
    asset: (p) => `build/${p.replace(/^\/+/, '')}`,
    theme: (p) => p,
  };
}

// ---------------------------------------------------------------------------
// Small hast helpers
// ---------------------------------------------------------------------------

const el = (tagName, properties = {}, children = []) => {
  if (Array.isArray(properties.className) && !properties.className.length) delete properties.className;
  return { type: 'element', tagName, properties, children };
};
const text = (value) => ({ type: 'text', value: String(value ?? '') });
const raw = (value) => ({ type: 'raw', value });
const cls = (...names) => names.filter(Boolean).flatMap((n) => String(n).split(/\s+/)).filter(Boolean);

function toPlainText(node) {
  if (!node) return '';
  if (typeof node.value === 'string') return node.value;
  return (node.children ?? []).map(toPlainText).join('');
}

// Terminal output: apply carriage returns (progress bars) and turn ANSI colours into spans.
function cleanCarriageReturns(s) {
  return s
    .split('\n')
    .map((line) => {
      const parts = line.split('\r').filter((p, i, a) => p !== '' || i === a.length - 1);
      return parts.length ? parts[parts.length - 1] : '';
    })
    .join('\n');
}

const ANSI_COLORS = ['black', 'red', 'green', 'yellow', 'blue', 'magenta', 'cyan', 'white'];
export function ansiToHast(input) {
  const s = cleanCarriageReturns(String(input ?? ''));
  const out = [];
  let state = { fg: null, bold: false };
  const re = /\x1b\[([0-9;]*)m/g;
  let last = 0;
  let m;
  const push = (chunk) => {
    if (!chunk) return;
    if (!state.fg && !state.bold) out.push(text(chunk));
    else out.push(el('span', { className: cls(state.fg && `ansi-${state.fg}`, state.bold && 'ansi-bold') }, [text(chunk)]));
  };
  while ((m = re.exec(s))) {
    push(s.slice(last, m.index));
    last = re.lastIndex;
    const codes = m[1] === '' ? [0] : m[1].split(';').map(Number);
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) state = { fg: null, bold: false };
      else if (c === 1) state = { ...state, bold: true };
      else if (c === 22) state = { ...state, bold: false };
      else if (c >= 30 && c <= 37) state = { ...state, fg: ANSI_COLORS[c - 30] };
      else if (c >= 90 && c <= 97) state = { ...state, fg: ANSI_COLORS[c - 90] };
      else if (c === 39) state = { ...state, fg: null };
      else if (c === 38 && codes[i + 1] === 5) {
        const n = codes[i + 2];
        state = { ...state, fg: n < 8 ? ANSI_COLORS[n] : n < 16 ? ANSI_COLORS[n - 8] : 'other' };
        i += 2;
      } else if (c === 38 && codes[i + 1] === 2) {
        state = { ...state, fg: 'other' };
        i += 4;
      }
    }
  }
  push(s.slice(last));
  // drop any other escape sequences
  for (const node of out) {
    const t = node.type === 'text' ? node : node.children[0];
    t.value = t.value.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
  }
  return out;
}

const LANG_ALIASES = { ipython3: 'python', ipython: 'python', python3: 'python', py: 'python', sh: 'bash', shell: 'bash', console: 'bash', yml: 'yaml' };
function highlight(value, lang) {
  const language = LANG_ALIASES[lang] ?? lang;
  if (language && hljs.getLanguage(language)) {
    try {
      return raw(hljs.highlight(value, { language, ignoreIllegals: true }).value);
    } catch {
      /* fall through */
    }
  }
  return text(value);
}

function codeBlock(value, lang, extraClass) {
  const v = value ?? '';
  return el('pre', { className: cls('code-block', extraClass) }, [
    el('code', { className: cls('hljs', lang && `language-${lang}`) }, [highlight(v, lang)]),
  ]);
}

// ---------------------------------------------------------------------------
// Page rendering
// ---------------------------------------------------------------------------

const OUTPUT_MIME_ORDER = [
  'text/html',
  'image/svg+xml',
  'image/png',
  'image/jpeg',
  'image/gif',
  'image/webp',
  'text/latex',
  'text/markdown',
  'application/json',
  'text/plain',
];

/**
 * Render one page to a complete HTML document.
 * ctx: { site, urls, slug, mode ('static'|'app'), cdnPort }
 * Returns { html, assets: Set<public path>, problems: [string], headings }
 */
export function renderPage(site, urls, slug, opts = {}) {
  const content = site.contents[slug];
  const page = site.pages.find((p) => p.slug === slug);
  const assets = new Set();
  const problems = [];
  const headings = [];
  const dataUrlToSlug = {};
  const urlToSlug = {};
  for (const p of site.pages) {
    if (!p.slug) continue;
    dataUrlToSlug[`/${p.slug}.json`] = p.slug;
    urlToSlug[`/${slugToUrl(p.slug)}`] = p.slug;
    if (p.isIndex) urlToSlug['/'] = p.slug;
  }
  const where = content.location ?? slug;

  const asset = (p) => {
    const clean = String(p).split('#')[0].split('?')[0];
    assets.add(clean.replace(/^\/+/, ''));
    return urls.asset(clean);
  };

  // '/slug#frag' (mystmd's url of a page) -> href of that page in this site
  const internalHref = (url, dataUrl) => {
    const [pathPart, frag] = String(url ?? '').split('#');
    let target = dataUrl ? dataUrlToSlug[dataUrl.split('#')[0]] : undefined;
    if (!target) target = urlToSlug[pathPart.replace(/\/$/, '') || '/'] ?? urlToSlug[pathPart];
    if (!target) return undefined;
    const here = target === slug && frag;
    return (here ? '' : urls.page(target)) + (frag ? `#${frag}` : '');
  };

  const linkHref = (node) => {
    const url = node.url ?? '';
    if (node.static) return asset(url);
    if (/^[a-z][a-z0-9+.-]*:/i.test(url) && !url.startsWith('file:')) return url; // http(s):, mailto:, ...
    if (url.startsWith('#')) return url;
    if (node.internal || url.startsWith('/')) {
      const href = internalHref(url, node.dataUrl);
      if (href !== undefined) return href;
    }
    problems.push(`${where}: unresolved link "${node.urlSource ?? url}"`);
    return undefined;
  };

  // Jupyter frontends show consecutive stream outputs of the same name (stdout/stderr) as one
  // block, with carriage returns applied across them (tqdm writes one output per update).
  const mergeStreams = (list) => {
    const merged = [];
    for (const o of list) {
      const out = o.type === 'output' ? o.jupyter_data : undefined;
      const prev = merged[merged.length - 1];
      const prevOut = prev?.type === 'output' ? prev.jupyter_data : undefined;
      if (out?.output_type === 'stream' && prevOut?.output_type === 'stream' && prevOut.name === out.name) {
        const join = (t) => (Array.isArray(t) ? t.join('') : t ?? '');
        merged[merged.length - 1] = { ...prev, jupyter_data: { ...prevOut, text: join(prevOut.text) + join(out.text) } };
      } else {
        merged.push(o);
      }
    }
    return merged;
  };

  const cellOutput = (node) => {
    const out = node.jupyter_data ?? {};
    const type = out.output_type;
    if (type === 'stream') {
      const t = Array.isArray(out.text) ? out.text.join('') : out.text ?? '';
      return el('pre', { className: cls('output-stream', `output-${out.name ?? 'stdout'}`) }, ansiToHast(t));
    }
    if (type === 'error') {
      const tb = Array.isArray(out.traceback) ? out.traceback.join('\n') : out.traceback ?? `${out.ename}: ${out.evalue}`;
      return el('pre', { className: cls('output-error') }, ansiToHast(tb));
    }
    const data = out.data ?? {};
    const mime = OUTPUT_MIME_ORDER.find((m) => data[m]) ?? Object.keys(data).find((m) => m.startsWith('image/'));
    if (!mime) {
      if (Object.keys(data).length) problems.push(`warning: ${where}: output with no displayable mime type (${Object.keys(data).join(', ')})`);
      return null;
    }
    const bundle = data[mime];
    const content = bundle.content;
    const alt = data['text/plain']?.content ?? 'output image';
    if (mime === 'text/html') return el('div', { className: cls('output-html') }, [raw(content ?? '')]);
    if (mime === 'image/svg+xml' && content !== undefined) {
      const src = `data:image/svg+xml;base64,${Buffer.from(content).toString('base64')}`;
      return el('div', { className: cls('output-image') }, [el('img', { src, alt })]);
    }
    if (mime.startsWith('image/')) {
      if (bundle.path) return el('div', { className: cls('output-image') }, [el('img', { src: asset(bundle.path), alt })]);
      if (content) return el('div', { className: cls('output-image') }, [el('img', { src: `data:${mime};base64,${content}`, alt })]);
      return null;
    }
    if (mime === 'text/latex' && bundle.html) return el('div', { className: cls('output-latex') }, [raw(bundle.html)]);
    if (mime === 'application/json') return el('pre', { className: cls('output-text') }, [text(JSON.stringify(content, null, 2))]);
    return el('pre', { className: cls('output-text') }, ansiToHast(content ?? ''));
  };

  const hidden = (summary, children, extraClass) =>
    el('details', { className: cls('hide', extraClass) }, [el('summary', {}, [text(summary)]), ...children]);

  const withVisibility = (visibility, summary, nodes, extraClass) => {
    if (visibility === 'remove') return [];
    if (visibility === 'hide') return [hidden(summary, nodes, extraClass)];
    return nodes;
  };

  const handlers = {
    // ---- document structure
    block: (state, node) => {
      if (node.visibility === 'remove') return undefined;
      const isCode = node.kind === 'notebook-code' || node.children?.some((c) => c.type === 'outputs' || c.type === 'output');
      const props = { className: cls(isCode ? 'cell code-cell' : 'cell', node.kind && `kind-${node.kind}`) };
      if (node.html_id && isCode) props.id = node.html_id;
      if (!isCode) return el('div', props, state.all(node));
      const children = [];
      for (const child of node.children ?? []) {
        if (child.type === 'code') {
          children.push(...withVisibility(child.visibility, 'Show code', [el('div', { className: ['cell-input'] }, [codeBlock(child.value, child.lang)])], 'hide-input'));
        } else if (child.type === 'outputs' || child.type === 'output') {
          const list = child.type === 'outputs' ? child.children ?? [] : [child];
          const rendered = mergeStreams(list).map((o) => (o.type === 'output' ? cellOutput(o) : state.one(o, child))).flat().filter(Boolean);
          if (rendered.length) {
            children.push(...withVisibility(child.visibility, 'Show output', [el('div', { className: ['cell-outputs'] }, rendered)], 'hide-output'));
          }
        } else {
          const r = state.one(child, node);
          if (r) children.push(...(Array.isArray(r) ? r : [r]));
        }
      }
      const cell = el('div', props, children);
      return node.visibility === 'hide' ? hidden('Show cell', [cell], 'hide-cell') : cell;
    },
    outputs: (state, node) => el('div', { className: ['cell-outputs'] }, mergeStreams(node.children ?? []).map((o) => (o.type === 'output' ? cellOutput(o) : state.one(o, node))).filter(Boolean)),
    output: (state, node) => cellOutput(node),
    heading: (state, node) => {
      const id = node.html_id ?? node.identifier;
      const children = state.all(node);
      if (id && node.depth >= 2 && node.depth <= 3) headings.push({ id, depth: node.depth, text: toPlainText(node) });
      if (id) children.push(el('a', { className: ['headerlink'], href: `#${id}`, title: 'Link to this heading', ariaHidden: 'true' }, [text('#')]));
      return el(`h${Math.min(Math.max(node.depth, 1), 6)}`, id ? { id } : {}, children);
    },
    // ---- maths (already rendered by KaTeX inside mystmd)
    math: (state, node) => {
      const id = node.html_id ?? node.identifier;
      const body = node.html ? raw(node.html) : el('code', { className: ['math-error'] }, [text(node.value)]);
      if (!node.html) problems.push(`${where}: maths not rendered: ${node.value}`);
      const children = [el('div', { className: ['math-body'] }, [body])];
      if (node.enumerator) children.push(el('span', { className: ['eq-number'] }, [text(`(${node.enumerator})`)]));
      return el('div', { className: ['math-display'], ...(id ? { id } : {}) }, children);
    },
    inlineMath: (state, node) => (node.html ? el('span', { className: ['math-inline'] }, [raw(node.html)]) : el('code', { className: ['math-error'] }, [text(node.value)])),
    // ---- links and references
    link: (state, node) => {
      const href = linkHref(node);
      const children = state.all(node);
      if (!children.length) children.push(text(node.url));
      if (href === undefined) return el('span', { className: ['link-unresolved'], title: `unresolved link: ${node.url}` }, children);
      const external = /^https?:/.test(href);
      return el('a', { href, ...(node.title ? { title: node.title } : {}), ...(external ? { className: ['external'], rel: 'noopener' } : {}) }, children);
    },
    crossReference: (state, node) => {
      const children = state.all(node);
      if (!children.length) children.push(text(node.identifier ?? node.label ?? '?'));
      const id = node.html_id ?? node.identifier;
      if (!node.resolved && !node.remote) {
        problems.push(`${where}: unresolved cross-reference "${node.identifier ?? node.label}"`);
        return el('span', { className: ['xref', 'xref-unresolved'] }, children);
      }
      let href = `#${id}`;
      if (node.remote) {
        href = internalHref(`${node.url ?? ''}#${id}`, node.dataUrl);
        if (href === undefined) {
          problems.push(`${where}: cross-reference "${node.identifier}" points to an unknown page ${node.url}`);
          return el('span', { className: ['xref', 'xref-unresolved'] }, children);
        }
      }
      return el('a', { href, className: ['xref', node.kind && `xref-${node.kind}`] }, children);
    },
    // ---- figures and images
    image: (state, node) => {
      const style = [];
      if (node.width) style.push(`width:${/^\d+$/.test(String(node.width)) ? `${node.width}px` : node.width}`);
      if (node.height) style.push(`height:${/^\d+$/.test(String(node.height)) ? `${node.height}px` : node.height}`);
      const src = /^(https?:|data:)/.test(node.url ?? '') ? node.url : asset(node.url ?? '');
      return el('img', {
        src,
        alt: node.alt ?? '',
        ...(node.title ? { title: node.title } : {}),
        className: cls('image', node.align && `align-${node.align}`, node.class),
        ...(style.length ? { style: style.join(';') } : {}),
      });
    },
    container: (state, node) => {
      const id = node.html_id ?? node.identifier;
      const tag = node.kind === 'figure' ? 'figure' : 'div';
      return el(tag, { ...(id ? { id } : {}), className: cls('container', `container-${node.kind ?? 'generic'}`, node.class) }, state.all(node));
    },
    caption: (state, node) => el('figcaption', {}, state.all(node)),
    captionNumber: (state, node) => el('span', { className: ['caption-number'] }, state.all(node)),
    legend: (state, node) => el('div', { className: ['legend'] }, state.all(node)),
    // ---- admonitions and other directives
    admonition: (state, node) => {
      const kind = node.kind ?? 'note';
      const children = state.all(node);
      const classes = cls('admonition', kind, node.class);
      if (String(node.class ?? '').includes('dropdown')) {
        const [first, ...rest] = children;
        const title = node.children?.[0]?.type === 'admonitionTitle' ? first.children : [text(kind)];
        return el('details', { className: classes }, [el('summary', { className: ['admonition-title'] }, title), ...(node.children?.[0]?.type === 'admonitionTitle' ? rest : children)]);
      }
      return el('aside', { className: classes }, children);
    },
    admonitionTitle: (state, node) => el('p', { className: ['admonition-title'] }, state.all(node)),
    details: (state, node) => el('details', { className: cls(node.class) }, state.all(node)),
    summary: (state, node) => el('summary', {}, state.all(node)),
    div: (state, node) => el('div', { className: cls(node.class) }, state.all(node)),
    span: (state, node) => el('span', { className: cls(node.class) }, state.all(node)),
    aside: (state, node) => el('aside', { className: cls('margin', node.class) }, state.all(node)),
    embed: (state, node) => el('div', { className: ['embed'] }, state.all(node)),
    include: (state, node) => el('div', { className: ['include'] }, state.all(node)),
    card: (state, node) => el('div', { className: cls('card', node.class) }, state.all(node)),
    cardTitle: (state, node) => el('p', { className: ['card-title'] }, state.all(node)),
    grid: (state, node) => el('div', { className: cls('grid', node.class) }, state.all(node)),
    tabSet: (state, node) => el('div', { className: ['tab-set'] }, state.all(node)),
    tabItem: (state, node) => el('div', { className: ['tab-item'] }, [el('p', { className: ['tab-title'] }, [text(node.title ?? '')]), ...state.all(node)]),
    code: (state, node) => {
      const id = node.html_id ?? node.identifier;
      const pre = codeBlock(node.value, node.lang, node.class);
      if (id) pre.properties.id = id;
      return node.visibility === 'remove' ? undefined : pre;
    },
    html: (state, node) => raw(node.value ?? ''),
    // ---- lists: MyST marks every item `spread`; a list that is not spread is tight (no <p>)
    listItem: (state, node, parent) => {
      const children = state.all(node);
      const tight = parent && parent.spread === false;
      const out = [];
      children.forEach((c, i) => {
        if (tight && c.type === 'element' && c.tagName === 'p') {
          if (i > 0) out.push(text('\n'));
          out.push(...c.children);
        } else out.push(c);
      });
      if (node.checked === true || node.checked === false) {
        out.unshift(el('input', { type: 'checkbox', checked: node.checked, disabled: true }), text(' '));
      }
      return el('li', {}, out);
    },
    // ---- tables: MyST marks header cells itself (`header: true`)
    table: (state, node) => {
      const rows = node.children ?? [];
      const isHead = (r) => r.children?.length && r.children.every((c) => c.header);
      const head = [];
      const body = [];
      rows.forEach((r, i) => ((body.length === 0 && isHead(r) ? head : body).push(state.one(r, node))));
      const children = [];
      if (head.length) children.push(el('thead', {}, head));
      if (body.length) children.push(el('tbody', {}, body));
      return el('div', { className: ['table-wrapper'] }, [el('table', { className: cls(node.class) }, children)]);
    },
    tableRow: (state, node) => el('tr', {}, (node.children ?? []).map((c) => state.one(c, node))),
    tableCell: (state, node) => {
      const props = {};
      if (node.align) props.style = `text-align:${node.align}`;
      if (node.colspan) props.colSpan = node.colspan;
      if (node.rowspan) props.rowSpan = node.rowspan;
      return el(node.header ? 'th' : 'td', props, state.all(node));
    },
    // ---- citations (text only)
    cite: (state, node) => el('span', { className: ['cite'] }, state.all(node).length ? state.all(node) : [text(node.label ?? '')]),
    citeGroup: (state, node) => el('span', { className: ['cite-group'] }, state.all(node)),
    // ---- things a static page cannot show
    mermaid: (state, node) => codeBlock(node.value, 'text', 'mermaid'),
    iframe: (state, node) => el('p', {}, [el('a', { href: node.src }, [text(node.src ?? 'embedded page')])]),
    comment: () => undefined,
  };

  const unknownHandler = (state, node) => {
    problems.push(`warning: ${where}: node type "${node.type}" rendered generically`);
    if (typeof node.value === 'string' && !node.children) return text(node.value);
    return el('div', { className: ['unknown', `unknown-${node.type}`] }, state.all(node));
  };

  const hast = mystToHast({ handlers, unknownHandler, allowDangerousHtml: true })(content.mdast);
  const bodyHtml = toHtml(hast, { allowDangerousHtml: true });

  const fm = content.frontmatter ?? {};
  const title = fm.title ?? page?.title ?? slug;
  const header = [];
  if (!fm.content_includes_title) header.push(`<h1 class="page-title">${escapeHtml(title)}</h1>`);
  if (fm.subtitle) header.push(`<p class="page-subtitle">${escapeHtml(fm.subtitle)}</p>`);
  const downloads = (fm.exports ?? [])
    .filter((e) => e.url && /\.(ipynb|md)$/.test(e.filename ?? e.url))
    .map((e) => `<a class="download" href="${escapeAttr(asset(e.url))}" download="${escapeAttr(e.filename ?? '')}">Download ${escapeHtml(e.filename ?? 'source')}</a>`);
  if (downloads.length) header.push(`<p class="page-downloads">${downloads.join(' ')}</p>`);

  const html = layout({ site, urls, slug, title, article: `${header.join('\n')}\n${bodyHtml}`, headings, opts });
  return { html, assets, problems, headings };
}

// ---------------------------------------------------------------------------
// Layout: sidebar, pager, document shell
// ---------------------------------------------------------------------------

export function escapeHtml(s) {
  return String(s ?? '').replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
function escapeAttr(s) {
  return escapeHtml(s).replace(/"/g, '&quot;');
}

function layout({ site, urls, slug, title, article, headings, opts }) {
  const readable = site.pages.filter((p) => p.slug);
  const pos = readable.findIndex((p) => p.slug === slug);
  const prev = pos > 0 ? readable[pos - 1] : undefined;
  const next = pos >= 0 && pos < readable.length - 1 ? readable[pos + 1] : undefined;
  const indexSlug = readable.find((p) => p.isIndex)?.slug;

  const nav = site.pages
    .map((p) => {
      if (p.heading) return `<li class="toc-group level-${p.level}">${escapeHtml(p.title)}</li>`;
      const current = p.slug === slug;
      const sub =
        current && headings.length
          ? `<ul class="toc-local">${headings
              .filter((h) => h.depth === 2)
              .map((h) => `<li><a href="#${escapeAttr(h.id)}">${escapeHtml(h.text)}</a></li>`)
              .join('')}</ul>`
          : '';
      return `<li class="toc-entry level-${p.level}${current ? ' current' : ''}"><a href="${escapeAttr(urls.page(p.slug))}"${current ? ' aria-current="page"' : ''}>${escapeHtml(p.shortTitle ?? p.title)}</a>${sub}</li>`;
    })
    .join('\n');

  const pager = [
    prev
      ? `<a class="pager-prev" rel="prev" href="${escapeAttr(urls.page(prev.slug))}"><span class="pager-label">← Previous</span><span class="pager-title">${escapeHtml(prev.title)}</span></a>`
      : '<span></span>',
    next
      ? `<a class="pager-next" rel="next" href="${escapeAttr(urls.page(next.slug))}"><span class="pager-label">Next →</span><span class="pager-title">${escapeHtml(next.title)}</span></a>`
      : '<span></span>',
  ].join('\n');

  const authors = (site.project.authors ?? []).map((a) => a.name).filter(Boolean).join(', ');
  const reload =
    opts.mode === 'app' && opts.cdnPort
      ? `<script>(function(){try{var ws=new WebSocket('ws://'+location.hostname+':${Number(opts.cdnPort)}/socket');ws.onmessage=function(e){try{if(JSON.parse(e.data).type==='RELOAD')location.reload();}catch(_){}};}catch(_){}})();</script>`
      : '';

  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)} — ${escapeHtml(site.title)}</title>
<meta name="generator" content="avgn offline MyST theme">
<link rel="stylesheet" href="${escapeAttr(urls.theme('katex/katex.min.css'))}">
<link rel="stylesheet" href="${escapeAttr(urls.theme('book.css'))}">
</head>
<body>
<a class="skip-link" href="#main">Skip to content</a>
<div class="layout">
<nav class="sidebar" aria-label="Chapters">
<a class="book-title" href="${escapeAttr(urls.page(indexSlug))}">${escapeHtml(site.title)}</a>
${authors ? `<p class="book-authors">${escapeHtml(authors)}</p>` : ''}
<ul class="toc">
${nav}
</ul>
</nav>
<main id="main" class="content">
<article class="page" data-slug="${escapeAttr(slug)}">
${article}
</article>
<nav class="pager" aria-label="Previous and next chapters">
${pager}
</nav>
<footer class="page-footer">${escapeHtml(site.title)}${authors ? ` · ${escapeHtml(authors)}` : ''}</footer>
</main>
</div>
${reload}
</body>
</html>
`;
}

