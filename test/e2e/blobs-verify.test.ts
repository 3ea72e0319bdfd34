/**
 * `atmirror verify` and blobs on a damaged disk, against a real PDS + PLC, on both
 * block stores: every stored blob a repo references is re-hashed (streamed), a
 * damaged one (a file blob with a byte flipped, a small blob's block with a byte
 * flipped) or a missing one (its file deleted) is reported by CID and refetched
 * from the PDS; with the PDS down it is reported, the repo fails (exit 1,
 * StoredBlobsDamagedError) and the damaged copy is gone, and the next `mirror`
 * fetches it again.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, describe, it } from 'node:test'
import { AtpAgent } from '@atproto/api'
import { CID } from '../../src/repo/cid.ts'
import { BLOCKSTORE_KINDS, overwriteRawBlock, readRawBlock } from '../helpers/blocks.ts'
import { startTestNetwork, type TestAccount, type TestNetwork } from '../../support/network.ts'
import { upload, type Uploaded } from '../helpers/blobs.ts'

const pexec = promisify(execFile)
const CLI = join(import.meta.dirname, '../../bin/atmirror.ts')

interface BlobsReport { checked: number, bytes: number, repaired: Array<{ cid: string, was: string }>, failed: Array<{ cid: string, was: string }>, gone: string[] }

for (const kind of BLOCKSTORE_KINDS) describe(`verify and damaged blobs (${kind} store)`, () => {
  let net: TestNetwork
  let root: string
  let dir: string
  let dave: TestAccount
  let small: Uploaded
  let large: Uploaded
  let other: Uploaded

  const run = async (...args: string[]): Promise<{ stdout: string, stderr: string, code: number }> => {
    try {
      const { stdout, stderr } = await pexec(process.execPath, [CLI, ...args], { env: { ...process.env, ATMIRROR_DATA: dir, ATMIRROR_PLC: net.plcUrl, ATMIRROR_HANDLE_RESOLVER: net.pdsUrl } })
      return { stdout, stderr, code: 0 }
    } catch (err) {
      const e = err as { stdout: string, stderr: string, code: number }
      return { stdout: e.stdout, stderr: e.stderr, code: e.code }
    }
  }
  const fileOf = (blob: Uploaded): string => join(dir, 'blobs', blob.cid.slice(-3, -1), blob.cid)
  const flip = (bytes: Uint8Array): Uint8Array => {
    const bad = Uint8Array.from(bytes)
    bad[bad.length >> 1] ^= 0x01
    return bad
  }
  const blobsOf = (stdout: string): { ok: boolean, repo: { ok: boolean, blobs: BlobsReport, error?: { name: string, message: string } } } => {
    const report = JSON.parse(stdout)
    return { ok: report.ok, repo: report.repos[0] }
  }

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-blob-verify-'))
    dir = join(root, 'data')
    dave = await net.createAccount('dave')
    const agent = new AtpAgent({ service: net.pdsUrl })
    await agent.login({ identifier: dave.handle, password: dave.password })
    small = await upload(agent, randomBytes(6 * 1024))
    large = await upload(agent, randomBytes(200 * 1024))
    other = await upload(agent, randomBytes(90 * 1024))
    await net.writeRecords(dave, [{
      collection: 'app.bsky.feed.post',
      value: { text: 'pics', createdAt: new Date().toISOString(), embed: { $type: 'app.bsky.embed.images', images: [small, large, other].map(b => ({ alt: '', image: b.ref })) } }
    }])
    const first = await run('mirror', dave.did, '--json', '--blockstore', kind)
    assert.equal(first.code, 0, first.stderr)
    assert.equal(existsSync(fileOf(large)), true)
    assert.equal(existsSync(fileOf(small)), false, 'the small blob is a block')
  })

  after(async () => {
    await net?.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('verify re-hashes every stored blob: all intact, nothing refetched', async () => {
    const result = await run('verify', dave.did, '--json')
    assert.equal(result.code, 0, result.stdout + result.stderr)
    const { repo } = blobsOf(result.stdout)
    assert.deepEqual(repo.blobs, { checked: 3, bytes: small.bytes.byteLength + large.bytes.byteLength + other.bytes.byteLength, repaired: [], failed: [], gone: [] })
  })

  it('verify refetches a damaged file blob, a damaged block blob and a missing one, and says which', async () => {
    await writeFile(fileOf(large), flip(large.bytes))
    await rm(fileOf(other))
    await overwriteRawBlock(dir, CID.parse(small.cid), flip(small.bytes))
    const result = await run('verify', dave.did, '--json')
    assert.equal(result.code, 0, result.stdout + result.stderr)
    const { ok, repo } = blobsOf(result.stdout)
    assert.equal(ok, true)
    assert.deepEqual(repo.blobs.repaired.map(r => `${r.was} ${r.cid}`).sort(), [`damaged ${large.cid}`, `damaged ${small.cid}`, `missing ${other.cid}`].sort())
    assert.equal(repo.blobs.checked, 0)
    assert.ok(Buffer.from(await readFile(fileOf(large))).equals(large.bytes))
    assert.ok(Buffer.from(await readFile(fileOf(other))).equals(other.bytes))
    assert.ok(Buffer.from((await readRawBlock(dir, CID.parse(small.cid))) ?? []).equals(small.bytes))
    const text = await run('verify', dave.did)
    assert.equal(text.code, 0)
    assert.match(text.stdout, /blobs: 3 intact \(\d+ bytes\), 0 refetched, 0 not refetched, 0 taken down/)
    assert.match(text.stdout, /0 blocks and 0 blobs refetched/)
  })

  it('with no source, verify exits 1 naming the blob; the damaged copy is gone, and the next mirror fetches it', async () => {
    await writeFile(fileOf(large), flip(large.bytes))
    await net.stopPds()
    let result
    try {
      result = await run('verify', dave.did, '--json')
    } finally {
      await net.startPds()
    }
    assert.equal(result.code, 1, result.stdout + result.stderr)
    const { ok, repo } = blobsOf(result.stdout)
    assert.equal(ok, false)
    assert.deepEqual(repo.blobs.failed, [{ cid: large.cid, was: 'damaged' }])
    assert.equal(repo.error?.name, 'StoredBlobsDamagedError')
    assert.match(repo.error?.message ?? '', new RegExp(`cids=${large.cid}`))
    assert.equal(existsSync(fileOf(large)), false, 'the damaged file is never served again')
    // --no-repair only reports
    await rm(fileOf(other))
    const check = await run('verify', dave.did, '--json', '--no-repair')
    assert.equal(check.code, 1)
    assert.deepEqual(blobsOf(check.stdout).repo.blobs.failed, [{ cid: other.cid, was: 'missing' }])
    // both are wanted again: a mirror of the unchanged repo fetches them
    const mirrored = await run('mirror', dave.did, '--json')
    assert.equal(mirrored.code, 0, mirrored.stderr)
    assert.equal(JSON.parse(mirrored.stdout).blobs?.fetched.pds, 2)
    assert.ok(Buffer.from(await readFile(fileOf(large))).equals(large.bytes))
    assert.ok(Buffer.from(await readFile(fileOf(other))).equals(other.bytes))
  })
})
