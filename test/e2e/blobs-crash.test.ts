/**
 * `atmirror mirror` killed (SIGKILL) in the middle of a blob download: the blob is
 * not half-stored (no file in its place, no block), the partial download's temp
 * file is deleted when the store next opens, the repo itself stands (its advance
 * came before the blob pass), and the rerun stores the blob whole. The PDS is the
 * fake one (test/helpers/fake-pds.ts), which can stall a getBlob halfway; the
 * child is the real CLI.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { MirrorStore } from '../../src/mirror/store.ts'
import { RAW, cidForBytes } from '../../src/repo/cid.ts'
import { EvolvingRepo, posts } from '../helpers/evolving-repo.ts'
import { startFakePds, type FakePds } from '../helpers/fake-pds.ts'
import { until } from '../helpers/until.ts'

const CLI = join(import.meta.dirname, '../../bin/atmirror.ts')

describe('a mirror killed mid blob download', () => {
  let pds: FakePds
  let root: string
  let repo: EvolvingRepo
  const blob = randomBytes(4 * 1024 * 1024)
  const blobCid = cidForBytes(blob, RAW)

  before(async () => {
    pds = await startFakePds()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-blob-crash-'))
    repo = await EvolvingRepo.create(43, [
      ...posts(10),
      {
        collection: 'app.bsky.feed.post',
        rkey: '3zzzzzzzzzzzz',
        record: { $type: 'app.bsky.feed.post', text: 'a video', createdAt: '2024-01-01T00:00:00.000Z', embed: { $type: 'app.bsky.embed.video', video: { $type: 'blob', ref: blobCid, mimeType: 'video/mp4', size: blob.byteLength } } }
      }
    ])
    pds.setRepo(repo.did, repo.keypair, await repo.version())
    pds.setBlob(blobCid.toString(), blob)
  })

  after(async () => {
    await pds.stop()
    await rm(root, { recursive: true, force: true })
  })

  const mirror = (data: string): ReturnType<typeof spawn> => spawn(process.execPath, [CLI, 'mirror', repo.did, '--json'], {
    env: { ...process.env, ATMIRROR_DATA: data, ATMIRROR_PLC: pds.url, DEBUG: '' },
    stdio: ['ignore', 'pipe', 'pipe']
  })

  it('leaves nothing half-stored; the next open deletes the partial download, and the rerun stores the blob whole', async () => {
    const data = join(root, 'data')
    const tmp = join(data, 'blobs', '.tmp')
    // the PDS sends the first MiB and then nothing
    pds.handle('getBlob', (_req, res) => {
      res.writeHead(200, { 'content-type': 'video/mp4', 'content-length': blob.byteLength })
      res.write(blob.subarray(0, 1024 * 1024))
    })
    const child = mirror(data)
    let stderr = ''
    child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    const exited = new Promise<NodeJS.Signals | null>(resolve => { child.once('exit', (_code, signal) => { resolve(signal) }) })
    // killed once the partial download is on disk
    await until('a partial blob download on disk', () => existsSync(tmp) && readdirSync(tmp).some(name => statSync(join(tmp, name)).size >= 1024 * 1024), { timeout: 60_000 })
    child.kill('SIGKILL')
    assert.equal(await exited, 'SIGKILL', stderr)

    // before the store opens: a temp file, nothing in the blob's place
    assert.equal(readdirSync(tmp).length, 1)
    const store = await MirrorStore.open(data)
    try {
      assert.deepEqual(readdirSync(tmp), [], 'the partial download is deleted at open')
      assert.equal(existsSync(store.blobs.pathOf(blobCid)), false)
      assert.equal(await store.blobs.has(blobCid), false)
      // the repo stands; the blob is still wanted
      assert.equal((await store.getState(repo.did))?.commit, (await repo.version()).commit.toString())
      assert.deepEqual((await store.blobs.wanted(repo.did)).map(w => w.cid.toString()), [blobCid.toString()])
    } finally {
      await store.close()
    }

    // the rerun, with the PDS whole again
    pds.reset()
    const rerun = mirror(data)
    let stdout = ''
    rerun.stdout?.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
    const code = await new Promise<number | null>(resolve => { rerun.once('exit', (c) => { resolve(c) }) })
    assert.equal(code, 0, stdout)
    const result = JSON.parse(stdout) as { blobs?: { fetched: { pds: number }, bytes: number } }
    assert.equal(result.blobs?.fetched.pds, 1)
    assert.equal(result.blobs?.bytes, blob.byteLength)
    const after = await MirrorStore.open(data)
    try {
      const stream = await after.blobs.read(blobCid)
      assert.ok(stream !== undefined)
      const parts: Uint8Array[] = []
      for await (const part of stream.chunks) parts.push(part)
      assert.ok(Buffer.concat(parts).equals(blob))
      assert.deepEqual(readdirSync(tmp), [])
    } finally {
      await after.close()
    }
  })
})
