/**
 * The layer rule of docs/ARCHITECTURE.md, enforced: the "Layers" table names, for
 * each folder of src/, the folders it may depend on. Every relative import in src/
 * is parsed (TypeScript's own parser, so comments and strings do not count) and
 * checked against that table, and the folder graph must have no cycle. A new
 * folder must get a row before anything may import it.
 */
import assert from 'node:assert/strict'
import { readFile, readdir } from 'node:fs/promises'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { describe, it } from 'node:test'
import { relativeImports, sourceFiles } from './helpers/imports.ts'

const root = resolve(import.meta.dirname, '..')
const src = join(root, 'src')

/** `src/<folder>` rows of the layer table → the folders named in their "depends on" cell. */
async function statedLayers (): Promise<Map<string, Set<string>>> {
  const doc = await readFile(join(root, 'docs', 'ARCHITECTURE.md'), 'utf8')
  const rows = doc.split('\n').filter(line => /^\| `src\/[a-z-]+` \|/.test(line))
  const folders = rows.map(line => /^\| `src\/([a-z-]+)` \|/.exec(line)![1])
  const layers = new Map<string, Set<string>>()
  for (const line of rows) {
    const folder = /^\| `src\/([a-z-]+)` \|/.exec(line)![1]
    const cells = line.split('|').map(cell => cell.trim())
    const dependsOn = cells[cells.length - 2]
    const words = new Set(dependsOn.split(/[^a-z-]+/))
    layers.set(folder, new Set(folders.filter(other => other !== folder && words.has(other))))
  }
  return layers
}

/** The folder of src/ a file is in, or undefined for files at the top of src/ (index.ts, node.ts, errors.ts). */
function folderOf (file: string): string | undefined {
  const parts = relative(src, file).split(sep)
  return parts.length > 1 ? parts[0] : undefined
}

/** folder → folder edges, each with the imports that make it. */
async function folderGraph (): Promise<Map<string, Map<string, string[]>>> {
  const graph = new Map<string, Map<string, string[]>>()
  for (const file of await sourceFiles(src)) {
    const from = folderOf(file)
    if (from === undefined) continue
    for (const spec of relativeImports(file, await readFile(file, 'utf8'))) {
      const target = resolve(dirname(file), spec)
      const to = folderOf(target)
      if (to === undefined || to === from) continue
      const edges = graph.get(from) ?? new Map<string, string[]>()
      graph.set(from, edges)
      edges.set(to, [...(edges.get(to) ?? []), `${relative(root, file)} → ${spec}`])
    }
  }
  return graph
}

describe('layers (docs/ARCHITECTURE.md)', () => {
  it('every folder of src/ has a row in the layer table', async () => {
    const layers = await statedLayers()
    const folders = (await readdir(src, { withFileTypes: true })).filter(e => e.isDirectory()).map(e => e.name)
    for (const folder of folders) assert.ok(layers.has(folder), `src/${folder} has no row in the layer table of docs/ARCHITECTURE.md`)
  })

  it('each folder imports only the folders its row allows', async () => {
    const layers = await statedLayers()
    const wrong: string[] = []
    for (const [from, edges] of await folderGraph()) {
      for (const [to, imports] of edges) {
        if (layers.get(from)?.has(to) !== true) wrong.push(`src/${from} may not import src/${to}: ${imports.join(', ')}`)
      }
    }
    assert.deepEqual(wrong, [])
  })

  it('the folder graph has no cycle', async () => {
    const graph = await folderGraph()
    const state = new Map<string, 'open' | 'done'>()
    const cycles: string[] = []
    const visit = (node: string, path: string[]): void => {
      if (state.get(node) === 'done') return
      if (state.get(node) === 'open') { cycles.push([...path.slice(path.indexOf(node)), node].join(' → ')); return }
      state.set(node, 'open')
      for (const next of graph.get(node)?.keys() ?? []) visit(next, [...path, node])
      state.set(node, 'done')
    }
    for (const node of graph.keys()) visit(node, [])
    assert.deepEqual(cycles, [])
  })

  it('the stated table itself has no cycle', async () => {
    const layers = await statedLayers()
    const order: string[] = []
    const remaining = new Map([...layers].map(([k, v]) => [k, new Set(v)]))
    while (remaining.size > 0) {
      const ready = [...remaining].filter(([, deps]) => [...deps].every(d => order.includes(d))).map(([k]) => k)
      assert.ok(ready.length > 0, `the layer table has a cycle among ${[...remaining.keys()].join(', ')}`)
      for (const k of ready) { order.push(k); remaining.delete(k) }
    }
    assert.equal(order.length, layers.size)
  })
})
