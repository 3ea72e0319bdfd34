/**
 * atproto-interop-tests firehose/commit-proof-fixtures.json: build the tree
 * before the commit, apply it, then check that exactly the fixture's proof
 * blocks let the ops be undone back to the old root (sync 1.1 inductive proof).
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { MemoryBlockStore } from '../../../src/repo/block-store.ts'
import { cidForBytes, parseCid, type CID } from '../../../src/repo/cid.ts'
import { buildMst } from '../../../src/repo/mst/build.ts'
import { MstEditor } from '../../../src/repo/mst/mutate.ts'
import { invertCommitOps, normalizeCommitOps, verifyCommitProof, type CommitOp } from '../../../src/repo/mst/proof.ts'

interface Fixture {
  comment: string
  leafValue: string
  keys: string[]
  adds: string[]
  dels: string[]
  rootBeforeCommit: string
  rootAfterCommit: string
  blocksInProof: string[]
}

const fixtures = JSON.parse(readFileSync(join(import.meta.dirname, '../../vectors/atproto-interop-tests/firehose/commit-proof-fixtures.json'), 'utf8')) as Fixture[]

interface Prepared {
  value: CID
  before: CID
  after: CID
  ops: CommitOp[]
  proof: MemoryBlockStore
}

async function prepare (fixture: Fixture): Promise<Prepared> {
  const value = parseCid(fixture.leafValue)
  const before = buildMst(fixture.keys.map(rpath => ({ rpath, cid: value })))
  assert.equal(before.root.toString(), fixture.rootBeforeCommit, 'rootBeforeCommit')

  const store = new MemoryBlockStore()
  for (const block of before.blocks) store.put(block.cid, block.bytes)
  const editor = new MstEditor(store)
  let root = before.root
  for (const key of fixture.adds) root = (await editor.put(root, key, value)).root
  for (const key of fixture.dels) root = (await editor.delete(root, key)).root
  assert.equal(root.toString(), fixture.rootAfterCommit, 'rootAfterCommit')

  const finalKeys = fixture.keys.filter(key => !fixture.dels.includes(key)).concat(fixture.adds)
  const after = buildMst(finalKeys.map(rpath => ({ rpath, cid: value })))
  assert.equal(after.root.toString(), fixture.rootAfterCommit, 'rootAfterCommit built from scratch')

  const proof = new MemoryBlockStore()
  const afterBlocks = new Map(after.blocks.map(block => [block.cid.toString(), block]))
  for (const cid of fixture.blocksInProof) {
    const block = afterBlocks.get(cid)
    assert.ok(block !== undefined, `proof block ${cid} is a node of the new tree`)
    proof.put(block.cid, block.bytes)
  }
  const ops: CommitOp[] = [
    ...fixture.adds.map((path): CommitOp => ({ action: 'create', path, cid: value })),
    ...fixture.dels.map((path): CommitOp => ({ action: 'delete', path, cid: null, prev: value }))
  ]
  return { value, before: before.root, after: after.root, ops, proof }
}

describe('commit proofs (atproto-interop-tests firehose/commit-proof-fixtures.json)', () => {
  for (const fixture of fixtures) {
    it(fixture.comment, async () => {
      const { before, after, ops, proof } = await prepare(fixture)
      await verifyCommitProof(proof, after, before, ops)

      // A block every inversion order reads cannot be left out.
      const ordered = normalizeCommitOps(ops)
      const reversed = [...ordered].sort((a, b) => a.path < b.path ? 1 : -1)
      const first = new Set((await invertCommitOps(proof, after, ordered)).loaded.map(String))
      const second = new Set((await invertCommitOps(proof, after, reversed)).loaded.map(String))
      const needed = [...first].filter(cid => second.has(cid))
      assert.ok(needed.includes(after.toString()), 'the new root is needed')
      for (const cid of needed) {
        const partial = new MemoryBlockStore()
        for (const block of proof.blocks()) if (block.cid.toString() !== cid) partial.put(block.cid, block.bytes)
        await assert.rejects(verifyCommitProof(partial, after, before, ops), (err: Error & { cid?: string }) => {
          assert.equal(err.name, 'CommitProofError')
          assert.equal(err.cid, cid)
          return true
        }, `dropping ${cid}`)
      }
    })
  }
})

describe('commit proofs that do not hold', () => {
  const fixture = fixtures.find(f => f.comment === 'complex multi-op commit') as Fixture
  const other = cidForBytes(new TextEncoder().encode('another record'))

  const rejects = async (mutate: (p: Prepared) => { ops?: CommitOp[], prevData?: CID }, message: RegExp): Promise<void> => {
    const prepared = await prepare(fixture)
    const { ops = prepared.ops, prevData = prepared.before } = mutate(prepared)
    const sizeBefore = prepared.proof.size
    await assert.rejects(verifyCommitProof(prepared.proof, prepared.after, prevData, ops, { did: 'did:plc:test', rev: '3l' }), (err: Error) => {
      assert.equal(err.name, 'CommitProofError')
      assert.match(err.message, message)
      return true
    })
    assert.equal(prepared.proof.size, sizeBefore, 'nothing was stored')
  }

  it('rejects a wrong prevData', async () => {
    await rejects(p => ({ prevData: p.after }), /do not invert to prevData/)
  })
  it('rejects an op list missing an op', async () => {
    await rejects(p => ({ ops: p.ops.slice(1) }), /do not invert to prevData|missing/)
  })
  it('rejects a create whose record is not in the new tree', async () => {
    await rejects(p => ({ ops: [...p.ops, { action: 'create', path: 'A0/000000', cid: p.value }] }), /not in the new tree|missing/)
  })
  it('rejects a create with another CID than the tree holds', async () => {
    await rejects(p => ({ ops: p.ops.map(op => op.action === 'create' ? { ...op, cid: other } : op) }), /has CID/)
  })
  it('rejects a delete whose record is still in the tree', async () => {
    await rejects(p => ({ ops: [...p.ops, { action: 'delete', path: fixture.keys[0], cid: null, prev: p.value }] }), /still in the new tree/)
  })
  it('rejects an update that changes nothing', async () => {
    await rejects(p => ({ ops: [...p.ops, { action: 'update', path: fixture.keys[0], cid: p.value, prev: p.value }] }), /does not change/)
  })
  it('rejects a path listed twice', async () => {
    await rejects(p => ({ ops: [...p.ops, p.ops[0]] }), /more than one op/)
  })
  it('rejects an invalid path', async () => {
    await rejects(p => ({ ops: [...p.ops, { action: 'create', path: 'no-slash', cid: p.value }] }), /op path invalid/)
  })
  it('rejects a proof without the new root block', async () => {
    const prepared = await prepare(fixture)
    await assert.rejects(verifyCommitProof(new MemoryBlockStore(), prepared.after, prepared.before, prepared.ops), (err: Error & { cause?: Error }) => {
      assert.equal(err.name, 'CommitProofError')
      assert.equal(err.cause?.name, 'MissingBlockError')
      return true
    })
  })
})
