/**
 * Blobs peer to peer: real nodes (createMirrorNode, private mode on loopback) and a
 * real PDS + PLC (support/network.ts). A mirrors an account with images from the
 * PDS; the PDS stops; C, which knows only the hub B, mirrors the account from A: the
 * head by head exchange, the blocks and the blobs up to a Bitswap block's size by
 * Bitswap (small ones from A's block store, a larger one from A's blob file), byte
 * for byte; a blob too large for a block waits for the PDS, and comes from it once
 * it is back.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { AtpAgent } from '@atproto/api'
import type { MirrorNode } from '../../src/node.ts'
import { CID } from '../../src/repo/cid.ts'
import { startTestNode } from '../helpers/nodes.ts'
import { startTestNetwork, type TestAccount, type TestNetwork } from '../../support/network.ts'
import { imagePost, upload, type Uploaded } from '../helpers/blobs.ts'

async function readAll (chunks: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const chunk of chunks) parts.push(chunk)
  return Buffer.concat(parts)
}

describe('blobs peer to peer with the PDS down', () => {
  let net: TestNetwork
  let root: string
  let account: TestAccount
  const nodes: MirrorNode[] = []
  const blobs = { small: randomBytes(20 * 1024), file: randomBytes(300 * 1024), large: randomBytes(1536 * 1024) }
  const cids: Record<string, string> = {}

  async function node (name: string, bootstrap: MirrorNode[]): Promise<MirrorNode> {
    return await startTestNode(nodes, { root, plcUrl: net.plcUrl }, name, { bootstrap })
  }

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-blobs-p2p-'))
    account = await net.createAccount('blobsp2p')
    const agent = new AtpAgent({ service: net.pdsUrl })
    await agent.login({ identifier: account.handle, password: account.password })
    const images: Uploaded[] = []
    for (const [name, bytes] of Object.entries(blobs)) {
      const uploaded = await upload(agent, bytes)
      cids[name] = uploaded.cid
      images.push(uploaded)
    }
    await net.writeRecords(account, [{ collection: 'app.bsky.feed.post', rkey: 'pics', value: imagePost('pics', images) }])
  })

  after(async () => {
    for (const created of nodes.reverse()) await created.stop().catch(() => {})
    await net?.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('C takes the blobs that fit a block from A over Bitswap, and the larger one from the PDS once it is back', async () => {
    const b = await node('b', [])
    const a = await node('a', [b])
    const fromPds = await a.pin(account.did)
    assert.equal(fromPds.sync.blobs?.fetched.pds, 3)
    // A announces the repo; C will find A through B's DHT
    const c = await node('c', [b])
    await net.stopPds()
    const result = await c.pin(account.did)
    assert.equal(result.sync.source.startsWith('peer:'), true, result.sync.source)
    assert.equal(result.sync.blobs?.fetched.bitswap, 2)
    assert.equal(result.sync.blobs?.failed, 1, 'the 1.5 MiB blob is no block: it waits for the PDS')
    for (const name of ['small', 'file'] as const) {
      const stream = await c.store.blobs.read(CID.parse(cids[name]))
      assert.ok(stream !== undefined, name)
      assert.ok((await readAll(stream.chunks)).equals(blobs[name]), name)
    }
    assert.equal(await c.store.blobs.has(CID.parse(cids.large)), false)

    await net.startPds()
    const again = await c.sync(account.did)
    assert.equal(again.blobs?.fetched.pds, 1)
    const stream = await c.store.blobs.read(CID.parse(cids.large))
    assert.ok(stream !== undefined && (await readAll(stream.chunks)).equals(blobs.large))
  })
})
