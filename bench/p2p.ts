/**
 * Mirroring peer to peer with the PDS down, in one run:
 *
 *   node bench/p2p.ts [--records 5000] [--runs 3] [--provides 300]
 *
 * A real local PDS + PLC (support/network.ts). Node A (private mode, loopback)
 * mirrors a 5,000-record account from the PDS; the PDS is stopped. Then, per run:
 *
 * (a) baseline: raw Bitswap with in-memory stores on both ends (Helia, the same
 *     libp2p composition, MemoryBlockstore/MemoryDatastore) moving the same blocks:
 *     every CID of the repo asked at once through the Bitswap broker (one session,
 *     the seeker already knows every CID; no walk, no disk, and no verification
 *     beyond the broker's own hash check of every block).
 * (b) node B, a fresh data directory bootstrapped to A only, runs the full mirror:
 *     resolve (PLC), head from A by head exchange (the PDS refuses the connection),
 *     the MST walk level by level with every missing block from A over Bitswap,
 *     hash-check, staged write to blockstore-fs, full verification, advance.
 *     (b1) B in this process, sharing the event loop with A, like (a);
 *     (b2) B as its own process, `atmirror mirror DID --peer <A>`: two nodes as
 *     they really run. The time is the sync as the CLI reports it (Node start-up
 *     and libp2p start excluded, the same span as (b1)).
 *
 * Also: DHT provides per second on loopback (three in-memory nodes), the figure
 * behind `--provide all` being costly.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs, promisify } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import * as dagCbor from '@ipld/dag-cbor'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { MemoryDatastore } from 'datastore-core/memory'
import { startTestNetwork } from '../support/network.ts'
import { BitswapBroker } from '../src/blocks/bitswap-broker.ts'
import { createMirrorNode, type MirrorNode } from '../src/node.ts'
import { MirrorFinder } from '../src/net/mirrors.ts'
import { createNetwork, type MirrorNetwork } from '../src/net/network.ts'
import { readCar } from '../src/repo/car.ts'
import { cidForBytes, type CID } from '../src/repo/cid.ts'

const { values } = parseArgs({
  options: {
    records: { type: 'string', default: '5000' },
    runs: { type: 'string', default: '3' },
    provides: { type: 'string', default: '300' }
  }
})
const RECORDS = Number(values.records)
const RUNS = Math.max(1, Number(values.runs))
const PROVIDES = Number(values.provides)

const pexec = promisify(execFile)
const CLI = join(import.meta.dirname, '../bin/atmirror.ts')

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number
const rate = (n: number, s: number): string => `${(n / s).toFixed(0)} blocks/s`
const mbps = (bytes: number, s: number): string => `${(bytes / 1024 / 1024 / s).toFixed(2)} MB/s`

async function collect (chunks: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = []
  for await (const chunk of chunks) parts.push(chunk)
  return Buffer.concat(parts)
}

async function memoryNode (blockstore: MemoryBlockstore, bootstrap: string[] = []): Promise<MirrorNetwork> {
  const net = await createNetwork({ blockstore, datastore: new MemoryDatastore(), privateKey: await generateKeyPair('Ed25519') }, {
    mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap
  })
  await net.start()
  return net
}

const work = await mkdtemp(join(tmpdir(), 'atmirror-bench-p2p-'))
const net = await startTestNetwork()
const nodes: MirrorNode[] = []
try {
  process.stdout.write(`node ${process.version}; local PDS ${net.pdsUrl}, PLC ${net.plcUrl}\n`)
  const t0 = performance.now()
  const account = await net.createAccount('p2pbench')
  await net.writeRecords(account, Array.from({ length: RECORDS }, (_, i) => ({
    collection: 'app.bsky.feed.post',
    value: { text: `post number ${i}: ${'lorem ipsum '.repeat(1 + (i % 7))}`, createdAt: new Date(1_700_000_000_000 + i * 1000).toISOString() }
  })))
  process.stdout.write(`account ${account.did}: ${RECORDS} records written in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`)

  const nodeInit = (name: string, bootstrap: string[]): Parameters<typeof createMirrorNode>[0] => ({
    dataDir: join(work, name),
    plcUrl: net.plcUrl,
    allowHttpLocalhost: true,
    network: { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap },
    api: false,
    checkOnStart: false,
    intervalMs: 0
  })
  const a = await createMirrorNode(nodeInit('a', []))
  nodes.push(a)
  await a.start()
  const mirrored = await a.pin(account.did)
  await a.p2p?.idle()
  const aAddr = a.network?.getMultiaddrs()[0]?.toString() as string
  process.stdout.write(`A mirrored it from the PDS: ${mirrored.sync.records} records, rev ${mirrored.sync.rev}, ${mirrored.sync.seconds.toFixed(2)} s\n`)

  // the same blocks for the baseline
  const car = await readCar(await collect(a.exportCar(account.did)))
  const blocks: Array<{ cid: CID, bytes: Uint8Array }> = []
  for await (const block of car.blocks) blocks.push(block)
  const totalBytes = blocks.reduce((n, b) => n + b.bytes.byteLength, 0)
  process.stdout.write(`repo: ${blocks.length} blocks, ${(totalBytes / 1024 / 1024).toFixed(2)} MiB\n`)

  await net.stopPds()
  process.stdout.write('PDS stopped\n\n')

  const baseline: Array<{ s: number, n: number }> = []
  const mirror: Array<{ s: number, wall: number, n: number, bytes: number }> = []
  const child: Array<{ s: number, n: number, bytes: number }> = []
  for (let run = 0; run < RUNS; run++) {
    // (a) raw Bitswap, memory to memory
    const source = new MemoryBlockstore()
    for (const { cid, bytes } of blocks) await source.put(cid, bytes)
    const sa = await memoryNode(source)
    const sb = await memoryNode(new MemoryBlockstore(), [sa.getMultiaddrs()[0]?.toString() as string])
    const broker = new BitswapBroker({
      blocks: sb.helia.blockstore,
      libp2p: sb.libp2p,
      mirrors: new MirrorFinder({ libp2p: sb.libp2p }, { peers: [sa.getMultiaddrs()[0]?.toString() as string] })
    })
    await broker.peersFor(account.did) // connect first, as the head exchange does for (b)
    let started = performance.now()
    let n = 0
    for await (const _ of broker.getMany(blocks.map(b => b.cid), { did: account.did })) n++
    baseline.push({ s: (performance.now() - started) / 1000, n })
    await sb.stop()
    await sa.stop()

    // (b) the full mirror from A, PDS down
    const b = await createMirrorNode(nodeInit(`b${run}`, [aAddr]))
    nodes.push(b)
    await b.start()
    started = performance.now()
    const result = await b.pin(account.did)
    const wall = (performance.now() - started) / 1000
    if (result.sync.fetched.pds !== 0 || !result.sync.commit.equals(mirrored.sync.commit)) throw new Error('B did not mirror from A alone')
    mirror.push({ s: result.sync.seconds, wall, n: result.sync.fetched.bitswap, bytes: result.sync.bytes })
    await b.stop()
    nodes.splice(nodes.indexOf(b), 1)

    // (b2) B in its own process
    const { stdout } = await pexec(process.execPath, [CLI, 'mirror', account.did, '--peer', aAddr, '--data', join(work, `c${run}`), '--json'], {
      env: { ...process.env, ATMIRROR_PLC: net.plcUrl }
    })
    const out = JSON.parse(stdout) as { commit: string, seconds: number, bytes: number, fetched: { pds: number, bitswap: number } }
    if (out.fetched.pds !== 0 || out.commit !== mirrored.sync.commit.toString()) throw new Error('the child did not mirror from A alone')
    child.push({ s: out.seconds, n: out.fetched.bitswap, bytes: out.bytes })
    process.stdout.write(`run ${run + 1}: (a) ${n} blocks in ${baseline.at(-1)?.s.toFixed(2)} s; (b1) ${result.sync.fetched.bitswap} blocks over bitswap, sync ${result.sync.seconds.toFixed(2)} s (pin ${wall.toFixed(2)} s); (b2) ${out.fetched.bitswap} blocks, sync ${out.seconds.toFixed(2)} s\n`)
  }

  const aS = median(baseline.map(r => r.s))
  const aN = baseline[0]?.n as number
  const bS = median(mirror.map(r => r.s))
  const bN = mirror[0]?.n as number
  const bBytes = mirror[0]?.bytes as number
  process.stdout.write(`\n(a) baseline, raw Bitswap memory → memory: ${aS.toFixed(2)} s median of ${RUNS}; ${rate(aN, aS)}, ${mbps(totalBytes, aS)}\n`)
  const cS = median(child.map(r => r.s))
  const cN = child[0]?.n as number
  const cBytes = child[0]?.bytes as number
  process.stdout.write(`(b1) B full mirror, same process as A:     ${bS.toFixed(2)} s median of ${RUNS}; ${rate(bN, bS)}, ${mbps(bBytes, bS)}; (b1)/(a) = ${(bS / aS).toFixed(2)}\n`)
  process.stdout.write(`(b2) B full mirror, its own process:       ${cS.toFixed(2)} s median of ${RUNS}; ${rate(cN, cS)}, ${mbps(cBytes, cS)}; (b2)/(a) = ${(cS / aS).toFixed(2)}\n`)
  process.stdout.write(`target: >= 1000 blocks/s for the full mirror (two nodes, b2): ${(cN / cS).toFixed(0)} ${cN / cS >= 1000 ? 'OK' : 'BELOW TARGET'}; same process (b1): ${(bN / bS).toFixed(0)} ${bN / bS >= 1000 ? 'OK' : 'BELOW TARGET'}\n`)
  process.stdout.write(`machine load average while measuring: ${(await import('node:os')).loadavg().map(x => x.toFixed(2)).join(' ')} (2 cores)\n\n`)

  // DHT provides per second: three in-memory nodes, the provider asks the DHT for
  // the closest peers to each key and sends them ADD_PROVIDER
  const p1 = await memoryNode(new MemoryBlockstore())
  const p2 = await memoryNode(new MemoryBlockstore(), [p1.getMultiaddrs()[0]?.toString() as string])
  const p3 = await memoryNode(new MemoryBlockstore(), [p1.getMultiaddrs()[0]?.toString() as string])
  while (p2.dhtPeerCount() === 0 || p1.dhtPeerCount() < 2) await new Promise(resolve => setTimeout(resolve, 100))
  const keys = Array.from({ length: PROVIDES }, (_, i) => cidForBytes(dagCbor.encode({ provide: i })))
  for (const concurrency of [1, 8]) {
    let next = 0
    const started = performance.now()
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < keys.length) await p2.libp2p.contentRouting.provide(keys[next++] as CID)
    }))
    const s = (performance.now() - started) / 1000
    process.stdout.write(`DHT provides on loopback (3 nodes), concurrency ${concurrency}: ${PROVIDES} in ${s.toFixed(2)} s = ${(PROVIDES / s).toFixed(0)} provides/s; this repo's ${blocks.length} blocks would take ${(blocks.length / (PROVIDES / s)).toFixed(1)} s\n`)
    await Promise.all(keys.map(async key => { await p2.libp2p.contentRouting.cancelReprovide(key) }))
  }
  await Promise.all([p1.stop(), p2.stop(), p3.stop()])
} finally {
  await Promise.allSettled(nodes.map(async n => { await n.stop() }))
  await net.stop()
  await rm(work, { recursive: true, force: true })
}
