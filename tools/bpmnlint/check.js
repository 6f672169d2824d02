#!/usr/bin/env node
/*
 * CI check of BPMN files as Camunda Modeler / bpmn.io see them.
 *
 *   node check.js [FILE.bpmn | DIR]...
 *     default: every bpmn/**\/*.bpmn of the repository and every organisation's replaced BPMN,
 *     process_packs/**\/orgs/<org>/bpmn/*.bpmn (a tailoring ships them like the pack's own files)
 *
 * For each file:
 *   1. import with bpmn-moddle + the Camunda 7 descriptor (camunda-bpmn-moddle), exactly what the
 *      Modeler does: any import warning fails (unresolved references, unknown attributes or elements
 *      of known namespaces, duplicate ids…), and so does any element or attribute of a namespace the
 *      Modeler does not know (it would keep it as an untyped "generic" element);
 *   2. bpmnlint with ./.bpmnlintrc (extends bpmnlint:recommended): any report fails, errors and
 *      warnings alike - a rule is either satisfied or switched off in .bpmnlintrc with a reason
 *      (every override must have one in "reasons");
 *   3. DI completeness: every flow node, sequence flow, lane, participant and message flow has a
 *      BPMNShape / BPMNEdge, and every shape / edge points at an existing element.
 *
 * Prints file: [check] element: message lines; exit status 1 when anything was found, 2 on usage errors.
 */
'use strict';

const fs = require('fs');
const path = require('path');

const BpmnModdleModule = require('bpmn-moddle');
const BpmnModdle = BpmnModdleModule.default || BpmnModdleModule.BpmnModdle || BpmnModdleModule;
const camundaDescriptor = require('camunda-bpmn-moddle/resources/camunda.json');
const { Linter } = require('bpmnlint');
const NodeResolver = require('bpmnlint/lib/resolver/node-resolver');

const REPO = path.resolve(__dirname, '..', '..');
const RC = path.join(__dirname, '.bpmnlintrc');
const KNOWN_PREFIXES = new Set(['bpmn', 'bpmndi', 'dc', 'di', 'camunda']);

function loadConfig() {
  const raw = JSON.parse(fs.readFileSync(RC, 'utf8'));
  const reasons = raw.reasons || {};
  const problems = [];
  for (const rule of Object.keys(raw.rules || {})) {
    if (typeof reasons[rule] !== 'string' || reasons[rule].trim().length < 10) {
      problems.push(`.bpmnlintrc: rule '${rule}' is overridden without a reason in "reasons"`);
    }
  }
  for (const rule of Object.keys(reasons)) {
    if (!(rule in (raw.rules || {}))) problems.push(`.bpmnlintrc: reason given for '${rule}' which is not overridden`);
  }
  return { config: { extends: raw.extends, rules: raw.rules || {} }, problems };
}

// process_packs/**/orgs/<org>/bpmn/*.bpmn: the BPMN an organisation's tailoring replaces a pack process with
function orgBpmnFiles() {
  const out = [];
  const walk = (dir) => {
    if (!fs.existsSync(dir)) return;
    for (const name of fs.readdirSync(dir).sort()) {
      const p = path.join(dir, name);
      if (!fs.statSync(p).isDirectory() || name === 'node_modules') continue;
      if (name === 'orgs') {
        for (const org of fs.readdirSync(p).sort()) {
          const bpmnDir = path.join(p, org, 'bpmn');
          if (!fs.existsSync(bpmnDir) || !fs.statSync(bpmnDir).isDirectory()) continue;
          for (const f of fs.readdirSync(bpmnDir).sort()) {
            if (f.endsWith('.bpmn') && fs.statSync(path.join(bpmnDir, f)).isFile()) out.push(path.join(bpmnDir, f));
          }
        }
      } else {
        walk(p);
      }
    }
  };
  walk(path.join(REPO, 'process_packs'));
  return out;
}

function findFiles(args) {
  const roots = args.length ? args : [path.join(REPO, 'bpmn'), ...orgBpmnFiles()];
  const out = [];
  const walk = (p) => {
    const st = fs.statSync(p);
    if (st.isDirectory()) {
      for (const name of fs.readdirSync(p).sort()) walk(path.join(p, name));
    } else if (p.endsWith('.bpmn') || args.includes(p)) {
      out.push(p);
    }
  };
  for (const r of roots) walk(path.resolve(r));
  return out;
}

function label(el) {
  return el && (el.id ? `${el.$type} '${el.id}'` : el.$type) || '?';
}

// every model element below `root` (semantic and DI), depth first
function* walkModel(root, seen = new Set()) {
  if (!root || typeof root !== 'object' || seen.has(root)) return;
  seen.add(root);
  if (root.$type) yield root;
  const descriptor = root.$descriptor;
  if (!descriptor || descriptor.isGeneric) {
    for (const key of Object.keys(root)) {
      if (key.startsWith('$')) continue;
      const v = root[key];
      for (const child of Array.isArray(v) ? v : [v]) {
        if (child && typeof child === 'object' && child.$type) yield* walkModel(child, seen);
      }
    }
    if (root.$children) for (const c of root.$children) yield* walkModel(c, seen);
    return;
  }
  for (const prop of descriptor.properties) {
    if (prop.isReference || prop.type === 'String' || !root[prop.name]) continue;
    const v = root[prop.name];
    for (const child of Array.isArray(v) ? v : [v]) yield* walkModel(child, seen);
  }
}

function unknownContent(definitions) {
  const found = [];
  for (const el of walkModel(definitions)) {
    const prefix = el.$type.split(':')[0];
    if (el.$descriptor && el.$descriptor.isGeneric || !KNOWN_PREFIXES.has(prefix)) {
      found.push(`unknown element <${el.$type}> (namespace not known to Camunda Modeler)`);
    }
    for (const attr of Object.keys(el.$attrs || {})) {
      // namespace declarations, and xsi:type (which moddle resolved to the element's type)
      if (attr === 'xmlns' || attr.startsWith('xmlns:') || attr.startsWith('xsi:')) continue;
      found.push(`${label(el)}: unknown attribute ${attr}`);
    }
  }
  return found;
}

function diProblems(definitions) {
  const semantic = new Map(); // element -> needs 'shape' | 'edge'
  const need = (el, kind) => semantic.set(el, kind);
  const visitContainer = (c) => {
    for (const fe of c.flowElements || []) {
      if (fe.$instanceOf('bpmn:SequenceFlow')) need(fe, 'edge');
      else if (fe.$instanceOf('bpmn:FlowNode')) {
        need(fe, 'shape');
        if (fe.$instanceOf('bpmn:SubProcess')) visitContainer(fe);
      }
    }
    const lanes = (ls) => (ls || []).forEach((ls2) => (ls2.lanes || []).forEach((l) => {
      need(l, 'shape');
      if (l.childLaneSet) lanes([l.childLaneSet]);
    }));
    lanes(c.laneSets);
  };
  for (const root of definitions.rootElements || []) {
    if (root.$instanceOf('bpmn:Process')) visitContainer(root);
    if (root.$instanceOf('bpmn:Collaboration')) {
      for (const p of root.participants || []) need(p, 'shape');
      for (const mf of root.messageFlows || []) need(mf, 'edge');
    }
  }
  const drawn = new Map();
  const out = [];
  for (const diagram of definitions.diagrams || []) {
    for (const pe of (diagram.plane && diagram.plane.planeElement) || []) {
      if (!pe.bpmnElement) {
        out.push(`${label(pe)}: refers to no BPMN element`);
        continue;
      }
      drawn.set(pe.bpmnElement, pe.$instanceOf('bpmndi:BPMNEdge') ? 'edge' : 'shape');
    }
  }
  if (!(definitions.diagrams || []).length) out.push('no BPMNDiagram: the file has no diagram interchange at all');
  for (const [el, kind] of semantic) {
    if (!drawn.has(el)) out.push(`${label(el)}: has no BPMN${kind === 'edge' ? 'Edge' : 'Shape'}`);
    else if (drawn.get(el) !== kind) out.push(`${label(el)}: drawn as a ${drawn.get(el)}, expected a ${kind}`);
  }
  return out;
}

async function checkFile(file, config, moddle) {
  const rel = path.relative(process.cwd(), file) || file;
  const problems = [];
  const xml = fs.readFileSync(file, 'utf8');
  let result;
  try {
    result = await moddle.fromXML(xml, 'bpmn:Definitions');
  } catch (err) {
    return [`${rel}: [import] ${err.message.split('\n')[0]}`];
  }
  for (const w of result.warnings || []) {
    problems.push(`${rel}: [import] ${w.message.split('\n')[0]}`);
  }
  for (const u of unknownContent(result.rootElement)) problems.push(`${rel}: [import] ${u}`);
  // a fresh linter per file: some rules (no-duplicate-sequence-flows) keep state between lint() calls
  const linter = new Linter({ config, resolver: new NodeResolver() });
  const reports = await linter.lint(result.rootElement);
  for (const [rule, items] of Object.entries(reports)) {
    for (const r of items) {
      const where = r.id ? `${r.id}: ` : '';
      problems.push(`${rel}: [bpmnlint ${rule} (${r.category})] ${where}${r.message}`);
    }
  }
  for (const d of diProblems(result.rootElement)) problems.push(`${rel}: [di] ${d}`);
  return problems;
}

async function main() {
  const args = process.argv.slice(2);
  const { config, problems } = loadConfig();
  const files = findFiles(args);
  if (!files.length) {
    console.error('no .bpmn files found');
    process.exit(2);
  }
  const moddle = new BpmnModdle({ camunda: camundaDescriptor });
  for (const f of files) problems.push(...await checkFile(f, config, moddle));
  for (const p of problems) console.log(p);
  console.log(`${files.length} file(s) checked, ${problems.length} problem(s)`);
  process.exit(problems.length ? 1 : 0);
}

main().catch((err) => {
  console.error(err && err.stack || err);
  process.exit(2);
});
