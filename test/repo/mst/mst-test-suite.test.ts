/**
 * DavidBuchanan314/mst-test-suite: every `mst-diff` case. The CARs hold only MST
 * blocks (no commit, no records). Each case's diff must give exactly the
 * expected created/deleted nodes, record ops, proof nodes and inductive proof
 * nodes, and the inductive proof nodes alone must let the ops be undone back to
 * the old root.
 */
import assert from 'node:assert/strict'
import { readFile, readdir } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { before, describe, it } from 'node:test'
import { MemoryBlockStore, type Block } from '../../../src/repo/block-store.ts'
import { readCar } from '../../../src/repo/car.ts'
import type { CID } from '../../../src/repo/cid.ts'
import { diffMst } from '../../../src/repo/mst/diff.ts'
import { verifyCommitProof, type CommitOp } from '../../../src/repo/mst/proof.ts'

const suite = join(import.meta.dirname, '../../vectors/mst-test-suite')

interface DiffCase {
  $type: 'mst-diff'
  description: string
  inputs: { mst_a: string, mst_b: string }
  results: {
    created_nodes: string[]
    deleted_nodes: string[]
    record_ops: Array<{ rpath: string, old_value: string | null, new_value: string | null }>
    proof_nodes: string[]
    inductive_proof_nodes: string[]
  }
}

async function findJson (dir: string): Promise<string[]> {
  const found: string[] = []
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) found.push(...await findJson(path))
    else if (entry.name.endsWith('.json')) found.push(path)
  }
  return found.sort()
}

interface LoadedCar { root: CID, blocks: Map<string, Block> }
const cars = new Map<string, Promise<LoadedCar>>()

/** Each CAR is read (and every block CID-checked) once, however many cases use it. */
function loadCar (path: string): Promise<LoadedCar> {
  let loading = cars.get(path)
  if (loading === undefined) {
    loading = (async () => {
      const car = await readCar(await readFile(join(suite, path)))
      const blocks = new Map<string, Block>()
      for await (const block of car.blocks) blocks.set(block.cid.toString(), block)
      return { root: car.roots[0], blocks }
    })()
    cars.set(path, loading)
  }
  return loading
}

const sortedStrings = (cids: readonly CID[]): string[] => cids.map(String).sort()

const files = await findJson(join(suite, 'tests'))

describe('mst-test-suite mst-diff cases', () => {
  const cases = new Map<string, DiffCase>()
  before(async () => {
    await Promise.all(files.map(async file => {
      const test = JSON.parse(await readFile(file, 'utf8')) as DiffCase
      cases.set(file, test)
      await Promise.all([loadCar(test.inputs.mst_a), loadCar(test.inputs.mst_b)])
    }))
  })

  it('has the 2048 exhaustive cases', () => {
    assert.equal(files.length, 2048)
  })

  for (const file of files) {
    const name = relative(join(suite, 'tests'), file).replace(/\.json$/, '')
    it(name, async () => {
      const test = cases.get(file) as DiffCase
      assert.equal(test.$type, 'mst-diff')
      const a = await loadCar(test.inputs.mst_a)
      const b = await loadCar(test.inputs.mst_b)
      const store = new MemoryBlockStore({ verified: true })
      for (const block of [...a.blocks.values(), ...b.blocks.values()]) store.put(block.cid, block.bytes)

      const diff = await diffMst(store, a.root, b.root, { proofs: true })
      const expected = test.results
      assert.deepEqual(sortedStrings(diff.createdNodes), expected.created_nodes, 'created_nodes')
      assert.deepEqual(sortedStrings(diff.deletedNodes), expected.deleted_nodes, 'deleted_nodes')
      assert.deepEqual(diff.recordOps.map(op => ({
        rpath: op.rpath,
        old_value: op.oldValue?.toString() ?? null,
        new_value: op.newValue?.toString() ?? null
      })), expected.record_ops, 'record_ops')
      assert.deepEqual(sortedStrings(diff.proofNodes ?? []), expected.proof_nodes, 'proof_nodes')
      assert.deepEqual(sortedStrings(diff.inductiveProofNodes ?? []), expected.inductive_proof_nodes, 'inductive_proof_nodes')

      if (expected.record_ops.length > 0) {
        const proofStore = new MemoryBlockStore({ verified: true })
        for (const cid of expected.inductive_proof_nodes) {
          const block = b.blocks.get(cid)
          assert.ok(block !== undefined, `inductive proof node ${cid} is in mst_b`)
          proofStore.put(block.cid, block.bytes)
        }
        const ops: CommitOp[] = diff.recordOps.map(op => op.oldValue === null
          ? { action: 'create', path: op.rpath, cid: op.newValue }
          : op.newValue === null
            ? { action: 'delete', path: op.rpath, cid: null, prev: op.oldValue }
            : { action: 'update', path: op.rpath, cid: op.newValue, prev: op.oldValue })
        await verifyCommitProof(proofStore, b.root, a.root, ops)
      }
    })
  }
})
