/**
 * The node's Prometheus metrics against real parts: a real PDS + PLC
 * (support/network.ts), nodes made by createMirrorNode with a real data directory,
 * real libp2p peers on loopback and the public HTTP server on, which turns metrics
 * on. `/metrics` is fetched with a plain HTTP GET and read with a strict line check
 * (test/helpers/prometheus.ts).
 *
 * A mirrors accounts from the PDS: the repo counts by status, the blocks stored, the
 * syncs and the blocks fetched from the PDS show; a taken-down account's failed
 * sync is counted by its error. Then the PDS goes down and B mirrors from A over
 * Bitswap: A's served counter rises and B counts its blocks as fetched from Bitswap,
 * each node in its own registry.
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { after, before, describe, it } from 'node:test'
import { randomBytes } from 'node:crypto'
import { AtpAgent } from '@atproto/api'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import type { SyncResult } from '../../src/mirror/sync.ts'
import { startTestNetwork, type TestAccount, type TestNetwork, type TestRecord } from '../../support/network.ts'
import { parseExposition, sampleValue, type Exposition } from '../helpers/prometheus.ts'
import { followerInit, startTestNode } from '../helpers/nodes.ts'
import { until } from '../helpers/until.ts'
import { imagePost, upload } from '../helpers/blobs.ts'

const BIN = join(import.meta.dirname, '../../bin/atmirror.ts')

const postsFor = (n: number, tag: string): TestRecord[] => Array.from({ length: n }, (_, i) => ({
  collection: 'app.bsky.feed.post',
  value: { text: `${tag} post ${i}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i % 60, i)).toISOString() }
}))

async function scrape (node: MirrorNode): Promise<Exposition> {
  const status = await node.status()
  assert.ok(status.metrics !== null, 'status names the metrics URL')
  const res = await fetch(status.metrics, { signal: AbortSignal.timeout(30_000) })
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/)
  return parseExposition(await res.text())
}

describe('metrics', () => {
  let net: TestNetwork
  let root: string
  let account: TestAccount
  const nodes: MirrorNode[] = []
  let a: MirrorNode

  async function node (name: string, init: { peers?: MirrorNode[] } = {}): Promise<MirrorNode> {
    return await startTestNode(nodes, { root, plcUrl: net.plcUrl }, name, {
      peers: init.peers ?? [],
      // every scrape starts a fresh scan of the stores (the figures show on a later one)
      init: { http: { port: 0 }, metrics: { usageMaxAgeMs: 0 } }
    })
  }

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-metrics-'))
    account = await net.createAccount('metrics')
    await net.writeRecords(account, postsFor(40, 'metrics'))
    a = await node('a')
  })

  after(async () => {
    for (const created of nodes.reverse()) await created.stop().catch(() => {})
    await net?.stop()
    if (root !== undefined) await rm(root, { recursive: true, force: true })
  })

  it('a mirrored repo shows: repos by status, blocks stored, the sync, blocks fetched from the PDS', async () => {
    const result = await a.pin(account.did)
    assert.ok(result.sync.fetched.pds > 0)
    const metrics = await scrape(a)
    assert.equal(sampleValue(metrics, 'atmirror_repos', { status: 'active' }), 1)
    assert.equal(sampleValue(metrics, 'atmirror_repos', { status: 'pending' }), 0)
    assert.equal(sampleValue(metrics, 'atmirror_repos', { status: 'takendown' }), 0)
    const usage = await a.store.blockstore.usage()
    assert.ok(usage.blocks > 40)
    assert.equal(sampleValue(metrics, 'atmirror_blocks_stored'), usage.blocks)
    assert.equal(sampleValue(metrics, 'atmirror_block_bytes_stored'), usage.bytes)
    assert.equal(sampleValue(metrics, 'atmirror_syncs_total', { result: 'full' }), 1)
    assert.equal(sampleValue(metrics, 'atmirror_syncs_total', { result: 'unchanged' }), 0)
    assert.equal(sampleValue(metrics, 'atmirror_sync_duration_seconds_count'), 1)
    assert.equal(sampleValue(metrics, 'atmirror_blocks_fetched_total', { source: 'pds' }), result.sync.fetched.pds)
    assert.equal(sampleValue(metrics, 'atmirror_blocks_fetched_total', { source: 'bitswap' }), 0)
    assert.equal(sampleValue(metrics, 'atmirror_fetched_bytes_total'), result.sync.bytes)
    assert.equal(metrics.types.get('atmirror_sync_errors_total'), 'counter')
    assert.equal((await a.status()).metrics, `${a.http?.url}/metrics`)
    // libp2p's own and the process's, in the same registry
    assert.ok([...metrics.types.keys()].some(name => name.startsWith('libp2p_')), 'libp2p metrics are there')
    assert.ok(metrics.types.has('process_cpu_user_seconds_total'), 'process metrics are there')
  })

  it('counts the blobs a sync stored, and the large ones stored as files', async () => {
    const pictures = await net.createAccount('pictures')
    const agent = new AtpAgent({ service: net.pdsUrl })
    await agent.login({ identifier: pictures.handle, password: pictures.password })
    const images = [await upload(agent, randomBytes(8 * 1024)), await upload(agent, randomBytes(100 * 1024))]
    await net.writeRecords(pictures, [{ collection: 'app.bsky.feed.post', value: imagePost('two pictures', images) }])
    const before = await scrape(a)
    const result = await a.pin(pictures.did)
    assert.equal(result.sync.blobs?.fetched.pds, 2)
    const metrics = await scrape(a)
    assert.equal(sampleValue(metrics, 'atmirror_blobs_fetched_total', { source: 'pds' }) - sampleValue(before, 'atmirror_blobs_fetched_total', { source: 'pds' }), 2)
    assert.equal(sampleValue(metrics, 'atmirror_blob_fetched_bytes_total') - sampleValue(before, 'atmirror_blob_fetched_bytes_total'), 108 * 1024)
    assert.equal(sampleValue(metrics, 'atmirror_blob_fetch_failures_total', { result: 'failed' }), 0)
    // the scans started by these scrapes come to see the large blob's file and the small one's block
    const usage = await a.store.blockstore.usage()
    await until('the scan sees the blob file', async () => {
      const seen = await scrape(a)
      return sampleValue(seen, 'atmirror_blob_files_stored') === 1 && sampleValue(seen, 'atmirror_blob_file_bytes_stored') === 100 * 1024 &&
        sampleValue(seen, 'atmirror_blocks_stored') === usage.blocks
    })
    await a.unpin(pictures.did)
  })

  it('counts a sync again, and a repo pinned but not yet mirrored as pending', async () => {
    await a.sync(account.did)
    const waiting = await net.createAccount('waiting')
    await a.addPin(waiting.did)
    const metrics = await scrape(a)
    assert.equal(sampleValue(metrics, 'atmirror_syncs_total', { result: 'unchanged' }), 1)
    assert.equal(sampleValue(metrics, 'atmirror_repos', { status: 'pending' }), 1)
    await a.unpin(waiting.did)
  })

  it('counts a failed sync by its error', async () => {
    const gone = await net.createAccount('gone')
    await net.writeRecords(gone, postsFor(3, 'gone'))
    await a.pin(gone.did)
    await net.takedownAccount(gone.did)
    // with peers to ask too, the takedown comes as the reason of the PDS among all the sources'
    const error = await a.sync(gone.did).then(() => undefined, (err: Error) => err)
    assert.equal(error?.name, 'HeadUnavailableError')
    assert.match(error.message, /RepoTakendown/)
    const metrics = await scrape(a)
    assert.equal(sampleValue(metrics, 'atmirror_sync_errors_total', { error: 'HeadUnavailableError' }), 1)
    assert.equal(sampleValue(metrics, 'atmirror_repos', { status: 'takendown' }), 1)
    assert.equal(sampleValue(metrics, 'atmirror_repos', { status: 'active' }), 1)
  })

  it('counts the blocks a peer fetched over Bitswap, on the serving node and on the fetching one', async () => {
    const before = sampleValue(await scrape(a), 'atmirror_bitswap_blocks_served_total')
    await net.stopPds()
    const b = await node('b', { peers: [a] })
    const result = await b.mirror(account.did)
    assert.ok(result.fetched.bitswap > 0, 'B fetched over Bitswap')
    const served = await scrape(a)
    assert.ok(sampleValue(served, 'atmirror_bitswap_blocks_served_total') - before >= result.fetched.bitswap, 'A counted every block it served B')
    assert.ok(sampleValue(served, 'atmirror_bitswap_bytes_served_total') > 0)
    // Helia's own Bitswap counter reports into the same registry
    assert.ok(sampleValue(served, 'helia_bitswap_sent_blocks_total') >= result.fetched.bitswap)
    const fetched = await scrape(b)
    assert.equal(sampleValue(fetched, 'atmirror_blocks_fetched_total', { source: 'bitswap' }), result.fetched.bitswap)
    assert.equal(sampleValue(fetched, 'atmirror_blocks_fetched_total', { source: 'pds' }), 0)
    // each node counts in its own registry
    assert.equal(sampleValue(fetched, 'atmirror_syncs_total', { result: 'full' }), 1)
    assert.deepEqual(fetched.samples.filter(sample => sample.name === 'atmirror_sync_errors_total'), [])
    assert.equal(sampleValue(served, 'atmirror_syncs_total', { result: 'full' }), 3)
  })

  it('counts HTTP requests by endpoint and status', async () => {
    const get = async (path: string, method = 'GET'): Promise<number> => (await fetch(`${a.http?.url}${path}`, { method, signal: AbortSignal.timeout(30_000) })).status
    const before = await scrape(a)
    const count = (metrics: Exposition, endpoint: string, status: number): number => {
      const found = metrics.samples.find(s => s.name === 'atmirror_http_requests_total' && s.labels.endpoint === endpoint && s.labels.status === String(status))
      return found?.value ?? 0
    }
    assert.equal(await get('/xrpc/_health'), 200)
    assert.equal(await get('/xrpc/_health'), 200)
    const unknown = await get('/xrpc/com.example.nothing.here')
    assert.ok(unknown >= 400)
    assert.equal(await get('/xrpc/_health', 'POST'), 405)
    const after = await scrape(a)
    assert.equal(count(after, '/xrpc/_health', 200) - count(before, '/xrpc/_health', 200), 2)
    assert.equal(count(after, 'other', unknown) - count(before, 'other', unknown), 1, 'an NSID no lexicon knows is counted as other')
    assert.equal(count(after, '/xrpc/_health', 405) - count(before, '/xrpc/_health', 405), 1)
    // the scrape before is counted once its answer ended
    assert.ok(count(after, '/metrics', 200) >= 1)
    assert.ok(sampleValue(after, 'atmirror_http_request_duration_seconds_count', { endpoint: '/xrpc/_health' }) >= 3)
  })
})

describe('metrics of a daemon, and of a node following a firehose', () => {
  let net: TestNetwork
  let dir: string
  let daemon: ChildProcess | undefined

  before(async () => {
    net = await startTestNetwork()
    dir = await mkdtemp(join(tmpdir(), 'atmirror-e2e-metrics-daemon-'))
  })

  after(async () => {
    if (daemon !== undefined && daemon.exitCode === null) {
      const exited = once(daemon, 'exit')
      daemon.kill('SIGTERM')
      await exited
    }
    await net?.stop()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('--http turns metrics on, and status points at them', async () => {
    daemon = spawn(process.execPath, [BIN, 'daemon', '--private', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '0', '--http', '127.0.0.1:0', '--data', dir, '--json', '--plc', net.plcUrl], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    daemon.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    const [line] = await once(createInterface({ input: daemon.stdout! }), 'line') as [string]
    const started = JSON.parse(line) as { event: string, http: string }
    assert.equal(started.event, 'started', stderr)
    const status = await run(['status', '--data', dir])
    assert.equal(status.code, 0, status.stderr)
    const url = /^metrics: +(\S+)$/m.exec(status.stdout)?.[1]
    assert.equal(url, `${started.http}/metrics`)
    const json = JSON.parse((await run(['status', '--json', '--data', dir])).stdout) as { metrics: string }
    assert.equal(json.metrics, url)
    const res = await fetch(url, { signal: AbortSignal.timeout(30_000) })
    assert.equal(res.status, 200)
    const metrics = parseExposition(await res.text())
    assert.equal(sampleValue(metrics, 'atmirror_repos', { status: 'active' }), 0)
    assert.equal(sampleValue(metrics, 'atmirror_blocks_stored'), 0)
  })

  it('a node following the PDS counts firehose events, its streams and their lag', async () => {
    const alice = await net.createAccount('follow')
    await net.writeRecords(alice, postsFor(2, 'before'))
    const node = await createMirrorNode(followerInit(join(dir, 'follower'), net.plcUrl, { http: { port: 0 } }))
    try {
      const handled: Array<{ type: string, outcome: string, rev?: string }> = []
      node.events.addEventListener('firehose:event', (evt) => { handled.push(evt.detail) })
      // syncs as the node reports them; commits applied from the firehose come as repo:synced too
      const synced: SyncResult[] = []
      node.events.addEventListener('repo:synced', (evt) => { synced.push(evt.detail) })
      await node.pin(alice.did)
      await node.start()
      await until('the PDS stream connected', () => node.status().then(s => s.subscriptions?.[0]?.state === 'connected'))
      const written = await net.writeRecords(alice, postsFor(1, 'followed'))
      await until('the commit handled from the firehose', () => handled.some(event => event.rev === written.commit.rev))
      const metrics = await scrape(node)
      const counted = metrics.samples.filter(sample => sample.name === 'atmirror_firehose_events_total')
      const expected = new Map<string, number>()
      for (const { type, outcome } of handled) expected.set(`${type} ${outcome}`, (expected.get(`${type} ${outcome}`) ?? 0) + 1)
      assert.deepEqual(new Map(counted.map(sample => [`${sample.labels.type} ${sample.labels.outcome}`, sample.value])), expected)
      assert.equal(sampleValue(metrics, 'atmirror_firehose_subscriptions', { state: 'connected' }), 1)
      assert.ok(sampleValue(metrics, 'atmirror_firehose_lag_seconds', { host: new URL(net.pdsUrl).origin }) >= 0)
      // a commit applied from the firehose is a firehose event, not a sync
      const syncs = synced.filter(result => !result.source.startsWith('firehose:'))
      assert.equal(sampleValue(metrics, 'atmirror_syncs_total', { result: 'incremental' }), syncs.filter(r => r.changed && !r.full).length)
      assert.equal(sampleValue(metrics, 'atmirror_syncs_total', { result: 'full' }) + sampleValue(metrics, 'atmirror_syncs_total', { result: 'unchanged' }), syncs.filter(r => r.full || !r.changed).length)
    } finally {
      await node.stop()
    }
  })
})

async function run (args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const [code] = await once(child, 'exit') as [number | null]
  return { code, stdout, stderr }
}
