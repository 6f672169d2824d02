#!/usr/bin/env node
/*
 * Render BPMN diagrams to SVG with bpmn-js (the bpmn.io / Camunda Modeler renderer) in headless Chromium.
 *
 *   npm ci && node render.js [OUT_DIR] [FILE.bpmn...]
 *     defaults: OUT_DIR = docs/diagrams, files = bpmn/iso20000/*.bpmn; writes OUT_DIR/<file name>.svg
 *
 * A docs step (the SVGs are committed); CI does not need a browser. Chromium comes from the system
 * (Debian: apt-get install chromium) - set CHROMIUM to another executable if needed.
 */
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const REPO = path.resolve(__dirname, '..', '..');
const VIEWER = require.resolve('bpmn-js/dist/bpmn-navigated-viewer.production.min.js');

async function main() {
  const args = process.argv.slice(2);
  const outDir = path.resolve(args[0] || path.join(REPO, 'docs', 'diagrams'));
  let files = args.slice(1).map((f) => path.resolve(f));
  if (!files.length) {
    const dir = path.join(REPO, 'bpmn', 'iso20000');
    files = fs.readdirSync(dir).filter((f) => f.endsWith('.bpmn')).sort().map((f) => path.join(dir, f));
  }
  fs.mkdirSync(outDir, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  let failed = 0;
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    // no network: the page is built from local files only
    await page.route('**/*', (route) => route.abort());
    await page.setContent('<!doctype html><html><body><div id="canvas" style="width:1600px;height:1000px"></div></body></html>');
    await page.addScriptTag({ content: fs.readFileSync(VIEWER, 'utf8') });
    for (const file of files) {
      const xml = fs.readFileSync(file, 'utf8');
      const result = await page.evaluate(async (source) => {
        const container = document.getElementById('canvas');
        container.innerHTML = '';
        const viewer = new window.BpmnJS({ container });
        try {
          const { warnings } = await viewer.importXML(source);
          viewer.get('canvas').zoom('fit-viewport');
          const { svg } = await viewer.saveSVG();
          return { svg, warnings: warnings.map((w) => w.message) };
        } catch (err) {
          return { error: String(err && err.message || err) };
        } finally {
          viewer.destroy();
        }
      }, xml);
      const name = path.basename(file, '.bpmn');
      if (result.error || result.warnings.length) {
        failed += 1;
        console.error(`${file}: ${result.error || result.warnings.join('; ')}`);
        continue;
      }
      const out = path.join(outDir, `${name}.svg`);
      fs.writeFileSync(out, result.svg.endsWith('\n') ? result.svg : result.svg + '\n');
      console.log(`${path.relative(REPO, out)} (${result.svg.length} bytes)`);
    }
  } finally {
    await browser.close();
  }
  process.exit(failed ? 1 : 0);
}

main().catch((err) => {
  console.error(err && err.stack || err);
  process.exit(2);
});
