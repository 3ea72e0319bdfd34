/**
 * A hostile firehose: the fake PDS (test/helpers/fake-pds.ts, repos made by
 * @atproto/repo) is the DID's host and serves a subscribeRepos stream from a `ws`
 * server whose frames the test writes. Each hostile event is refused (or, for a gap,
 * answered by a sync from the PDS) and reported with its reason; nothing of it is
 * stored and the stored repo stays as it was. A valid event sent last is applied,
 * so the refusals are not the stream being dead.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { WebSocketServer, type WebSocket } from 'ws'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import type { FollowedEvent } from '../../src/mirror/follower.ts'
import { joinCar } from '../helpers/car-tools.ts'
import { EvolvingRepo, post, posts, type RepoVersion } from '../helpers/evolving-repo.ts'
import { startFakePds, type FakePds } from '../helpers/fake-pds.ts'
import { until } from '../helpers/until.ts'

const time = (): string => new Date().toISOString()

async function recordCid (record: Record<string, unknown>): Promise<CID> {
  return CID.createV1(0x71, await sha256.digest(dagCbor.encode(record)))
}

function frame (t: string, body: Record<string, unknown>): Uint8Array {
  return new Uint8Array(Buffer.concat([dagCbor.encode({ op: 1, t }), dagCbor.encode(body)]))
}

interface CommitFields {
  did: string
  version: RepoVersion
  ops: Array<{ action: string, path: string, cid: CID | null, prev?: CID }>
  prevData: CID
}

function commitFrame (seq: number, fields: CommitFields): Uint8Array {
  const { version } = fields
  return frame('#commit', {
    seq,
    rebase: false,
    tooBig: false,
    repo: fields.did,
    commit: version.commit,
    rev: version.rev,
    since: null,
    blocks: joinCar([version.commit], version.blocks),
    ops: fields.ops,
    blobs: [],
    prevData: fields.prevData,
    time: time()
  })
}

describe('a hostile firehose', () => {
  let fake: FakePds
  let wss: WebSocketServer
  let socket: WebSocket | undefined
  let closeCodes: number[] = []
  let dir: string
  let node: MirrorNode
  let repo: EvolvingRepo
  let v0: RepoVersion
  /** A version older than v0 (made before it), validly signed. */
  let early: RepoVersion
  let otherDid: string
  let seq = 100
  const events: FollowedEvent[] = []
  const streamErrors: Error[] = []
  const rkey = '3jzfcijpj2z2a'
  const record = post(rkey, 'from the firehose')

  before(async () => {
    const earlyRepo = await EvolvingRepo.create(1, posts(3))
    early = await earlyRepo.write([{ action: 'create', value: post('3jzfcijpj2z2b', 'early') }])
    repo = await EvolvingRepo.create(1, posts(3))
    v0 = await repo.version()
    fake = await startFakePds()
    fake.setRepo(repo.did, repo.keypair, v0)
    const other = await EvolvingRepo.create(2, posts(1))
    otherDid = other.did
    fake.setRepo(other.did, other.keypair, await other.version())
    // its DID document names another host: this one does not serve it
    fake.setPdsEndpoint(other.did, 'http://localhost:47')
    wss = new WebSocketServer({ server: fake.server, path: '/xrpc/com.atproto.sync.subscribeRepos' })
    wss.on('connection', (ws) => {
      socket = ws
      ws.on('close', (code) => { closeCodes.push(code) })
    })
    dir = await mkdtemp(join(tmpdir(), 'atmirror-e2e-follow-hostile-'))
    node = await createMirrorNode({
      dataDir: dir,
      plcUrl: fake.url,
      allowHttpLocalhost: true,
      network: false,
      api: false,
      intervalMs: 0,
      checkOnStart: false,
      follow: { backoffMinMs: 20, backoffMaxMs: 100 }
    })
    node.events.addEventListener('firehose:event', (evt) => { events.push(evt.detail) })
    node.events.addEventListener('firehose:error', (evt) => { streamErrors.push(evt.detail.error) })
    await node.pin(repo.did)
    await node.addPin(other.did)
    await node.start()
    await until('the fake stream connected', () => socket !== undefined && node.status().then(s => s.subscriptions?.some(sub => sub.state === 'connected') === true))
    await until('the first check done', () => node.status().then(s => s.repos.every(r => !r.syncing)))
  })

  after(async () => {
    await node?.stop()
    for (const client of wss?.clients ?? []) client.terminate()
    await new Promise(resolve => wss?.close(resolve))
    await fake?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  /** Sends a frame and waits for its event's outcome. */
  async function send (bytes: Uint8Array, n: number): Promise<FollowedEvent> {
    assert.ok(socket !== undefined)
    socket.send(bytes)
    await until(`seq ${n} handled`, () => events.some(e => e.seq === n))
    return events.find(e => e.seq === n) as FollowedEvent
  }

  /** The stored repo is still v0 and holds nothing of the refused event. */
  async function intact (): Promise<void> {
    const state = await node.getState(repo.did)
    assert.equal(state.commit, v0.commit.toString())
    assert.equal(node.store.blockstore.getBytesSync(await recordCid(record.record)), undefined)
  }

  /** A commit on v0's tree, made by a copy of the repo signed with `keySeed`'s key. */
  async function nextVersion (init: { keySeed?: number, records?: number } = {}): Promise<RepoVersion> {
    const fork = await EvolvingRepo.create(1, posts(init.records ?? 3), { keySeed: init.keySeed })
    return await fork.write([{ action: 'create', value: record }])
  }

  const createOp = async (): Promise<CommitFields['ops']> => [{ action: 'create', path: `${record.collection}/${rkey}`, cid: await recordCid(record.record) }]

  it('refuses a commit with a bad signature', async () => {
    const version = await nextVersion({ keySeed: 99 })
    const evt = await send(commitFrame(++seq, { did: repo.did, version, ops: await createOp(), prevData: v0.data }), seq)
    assert.equal(evt.outcome, 'refused')
    assert.equal(evt.error?.name, 'CommitSignatureError')
    await intact()
  })

  it('refuses a prevData the ops do not invert to', async () => {
    const version = await nextVersion()
    const evt = await send(commitFrame(++seq, { did: repo.did, version, ops: await createOp(), prevData: version.data }), seq)
    assert.equal(evt.outcome, 'refused')
    assert.equal(evt.error?.name, 'CommitProofError')
    assert.match(evt.error?.message ?? '', /do not invert to prevData/)
    await intact()
  })

  it('does not apply a valid commit whose prevData is not the stored tree: syncs from the PDS instead', async () => {
    const version = await nextVersion({ records: 4 })
    const older = await EvolvingRepo.create(1, posts(4))
    const evt = await send(commitFrame(++seq, { did: repo.did, version, ops: await createOp(), prevData: (await older.version()).data }), seq)
    assert.equal(evt.outcome, 'resync')
    await intact()
  })

  it('refuses ops that do not match the blocks', async () => {
    const version = await nextVersion()
    const wrong = await recordCid({ $type: 'app.bsky.feed.post', text: 'something else' })
    const evt = await send(commitFrame(++seq, { did: repo.did, version, ops: [{ action: 'create', path: `${record.collection}/${rkey}`, cid: wrong }], prevData: v0.data }), seq)
    assert.equal(evt.outcome, 'refused')
    assert.equal(evt.error?.name, 'CommitProofError')
    await intact()
  })

  it('refuses a commit for a DID the host does not serve', async () => {
    const version = await nextVersion()
    const evt = await send(commitFrame(++seq, { did: otherDid, version, ops: await createOp(), prevData: v0.data }), seq)
    assert.equal(evt.outcome, 'refused')
    assert.equal(evt.error?.name, 'FirehoseEventRefusedError')
    assert.match(evt.error?.message ?? '', /does not serve/)
    assert.equal(await node.store.getState(otherDid), undefined)
    await intact()
  })

  it('ignores a rev rollback', async () => {
    const evt = await send(commitFrame(++seq, { did: repo.did, version: early, ops: [{ action: 'create', path: 'app.bsky.feed.post/3jzfcijpj2z2b', cid: await recordCid(post('3jzfcijpj2z2b', 'early').record) }], prevData: v0.data }), seq)
    assert.equal(evt.outcome, 'ignored')
    await intact()
  })

  it('refuses a #sync to an older rev', async () => {
    const commitBlock = early.blocks.find(b => b.cid.equals(early.commit))
    assert.ok(commitBlock !== undefined)
    const evt = await send(frame('#sync', { seq: ++seq, did: repo.did, rev: early.rev, blocks: joinCar([early.commit], [commitBlock]), time: time() }), seq)
    assert.equal(evt.outcome, 'refused')
    assert.equal(evt.error?.name, 'FirehoseEventRefusedError')
    assert.match(evt.error?.message ?? '', /older than the stored rev/)
    await intact()
  })

  it('drops the connection on a malformed frame, and comes back', async () => {
    const before = socket
    streamErrors.length = 0
    before?.send(new Uint8Array([0xff, 0x00, 0x01]))
    await until('the stream error reported', () => streamErrors.length > 0)
    assert.equal(streamErrors[0].name, 'FirehoseFrameError')
    await until('reconnected', () => socket !== before && node.status().then(s => s.subscriptions?.some(sub => sub.state === 'connected') === true))
    await intact()
  })

  it('refuses a 10 MB frame from its header', async () => {
    const before = socket
    streamErrors.length = 0
    closeCodes = []
    before?.send(new Uint8Array(10 * 1024 * 1024))
    await until('the stream error reported', () => streamErrors.length > 0)
    assert.equal(streamErrors[0].name, 'FirehoseConnectionError')
    await until('the close code seen', () => closeCodes.length > 0)
    assert.equal(closeCodes[0], 1009)
    await until('reconnected', () => socket !== before && node.status().then(s => s.subscriptions?.some(sub => sub.state === 'connected') === true))
    await intact()
  })

  it('applies a valid commit sent after all that', async () => {
    const version = await nextVersion()
    const evt = await send(commitFrame(++seq, { did: repo.did, version, ops: await createOp(), prevData: v0.data }), seq)
    assert.equal(evt.outcome, 'applied')
    const state = await node.getState(repo.did)
    assert.equal(state.commit, version.commit.toString())
    assert.ok(node.store.blockstore.getBytesSync(await recordCid(record.record)) !== undefined)
  })
})

