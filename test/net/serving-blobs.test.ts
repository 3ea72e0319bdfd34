/**
 * Blobs through the blockstore Bitswap serves from (ServingBlockstore): small blobs
 * (blocks in the block store) and file blobs up to Bitswap's block size are found
 * and hash-checked; larger ones are not offered; a withheld repo's blobs are not
 * served; a blob a disk spoiled is refused and removed. The blobs are mirrored for
 * real, from a fake PDS on 127.0.0.1.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { BlobFetcher, PdsBlobSource } from '../../src/blocks/blob-fetch.ts'
import { PdsHeadResolver } from '../../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { BlobMirror } from '../../src/mirror/blobs.ts'
import { datastoreHolderIndex } from '../../src/mirror/gc.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import { RepoSyncer } from '../../src/mirror/sync.ts'
import { ServingBlockstore } from '../../src/net/serving-blockstore.ts'
import { RAW, cidForBytes, type CID } from '../../src/repo/cid.ts'
import { EvolvingRepo, posts } from '../helpers/evolving-repo.ts'
import { startFakePds, type FakePds } from '../helpers/fake-pds.ts'

async function bytesOf (answer: Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const part of answer) parts.push(part)
  return Buffer.concat(parts)
}

describe('serving blobs over Bitswap', () => {
  let pds: FakePds
  let root: string
  let store: MirrorStore
  let serving: ServingBlockstore
  let repo: EvolvingRepo
  const blobs = { small: randomBytes(8 * 1024), file: randomBytes(200 * 1024), huge: randomBytes(2 * 1024 * 1024) }
  const cids = Object.fromEntries(Object.entries(blobs).map(([name, bytes]) => [name, cidForBytes(bytes, RAW)])) as Record<keyof typeof blobs, CID>

  before(async () => {
    pds = await startFakePds()
    root = await mkdtemp(join(tmpdir(), 'atmirror-serving-blobs-'))
    repo = await EvolvingRepo.create(47, [
      ...posts(5),
      ...Object.entries(blobs).map(([name, bytes], i) => ({
        collection: 'app.bsky.feed.post' as const,
        rkey: `3zzzzzzzzzzz${i}`,
        record: { $type: 'app.bsky.feed.post', text: name, createdAt: '2024-01-01T00:00:00.000Z', embed: { $type: 'app.bsky.embed.images', images: [{ alt: name, image: { $type: 'blob', ref: cidForBytes(bytes, RAW), mimeType: 'image/png', size: bytes.byteLength } }] } }
      }))
    ])
    pds.setRepo(repo.did, repo.keypair, await repo.version())
    for (const [name, bytes] of Object.entries(blobs)) pds.setBlob(cids[name as keyof typeof blobs].toString(), bytes)
    store = await MirrorStore.open(join(root, 'data'))
    const identity = new AtprotoIdentityResolver({ plcUrl: pds.url, allowHttpLocalhost: true })
    const mirror = new BlobMirror({ store, fetcher: new BlobFetcher({ sources: [new PdsBlobSource({ identity })] }) })
    const syncer = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }), blobs: mirror })
    assert.equal((await syncer.sync(repo.did)).blobs?.fetched.pds, 3)
    const blockHolders = datastoreHolderIndex(store.datastore)
    serving = new ServingBlockstore({
      blockstore: store.blockstore,
      verified: store,
      blobs: store.blobs,
      holders: {
        async * holders (cid, options) {
          yield * blockHolders.holders(cid, options)
          yield * store.blobs.holders(cid)
        }
      }
    })
  })

  after(async () => {
    await store?.close()
    await pds.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('finds a small blob (a block) and a file blob, with the bytes of the blob', async () => {
    for (const name of ['small', 'file'] as const) {
      assert.equal(await serving.has(cids[name]), true, name)
      assert.ok((await bytesOf(serving.get(cids[name]))).equals(blobs[name]), name)
    }
    assert.equal(existsSync(store.blobs.pathOf(cids.file)), true, 'the 200 KiB blob is a file')
  })

  it('does not offer a blob larger than a Bitswap block', async () => {
    assert.equal(await store.blobs.has(cids.huge), true)
    assert.equal(await serving.has(cids.huge), false)
    await assert.rejects(bytesOf(serving.get(cids.huge)), { name: 'NotFoundError' })
  })

  it('withholds the blobs of a withheld repo', async () => {
    serving.setServable(repo.did, false)
    try {
      assert.equal(await serving.has(cids.file), false)
      assert.equal(await serving.has(cids.small), false)
      await assert.rejects(bytesOf(serving.get(cids.file)), { name: 'NotFoundError' })
    } finally {
      serving.setServable(repo.did, true)
    }
    assert.equal(await serving.has(cids.file), true)
  })

  it('refuses a file blob a disk spoiled, and removes it', async () => {
    const path = store.blobs.pathOf(cids.file)
    const spoiled = readFileSync(path)
    spoiled[5] ^= 0x01
    writeFileSync(path, spoiled)
    await assert.rejects(bytesOf(serving.get(cids.file)), { name: 'NotFoundError' })
    assert.equal(existsSync(path), false)
    assert.equal(await serving.has(cids.file), false)
  })
})
