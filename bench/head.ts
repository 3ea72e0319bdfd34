/**
 * An unchanged sync on a node with peers, when no peer answers:
 *
 *   node bench/head.ts [--records 200] [--runs 21]
 *
 * A real local PDS + PLC (support/network.ts) and a running node in private mode on
 * loopback whose mirror lookup always finds one peer that never answers (a TCP port
 * that accepts and stays silent): the situation of a public node whose DHT lookup
 * finds nobody, without leaving 127.0.0.1. The node has mirrored the account; then,
 * per run:
 *
 * (a) baseline: the PDS round trip a head costs, `PdsHeadResolver.resolveHead`
 *     alone (getLatestCommit, then the commit block by getBlocks, verified);
 * (b) `node.sync(did)` on the unchanged repo: identity (cached), the composite head
 *     resolution (PDS and peers asked at once), the state's `syncedAt` written.
 *
 * Also, once: how long the peer lookup alone takes to give up, which is what every
 * sync waited for when the composite awaited all its sources. Target: (b) ≤ 100 ms.
 */
import { createServer, type Socket } from 'node:net'
import type { AddressInfo } from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { startTestNetwork } from '../support/network.ts'
import { PdsHeadResolver } from '../src/head/pds-head-resolver.ts'
import { createMirrorNode } from '../src/node.ts'

const { values } = parseArgs({
  options: {
    records: { type: 'string', default: '200' },
    runs: { type: 'string', default: '21' }
  }
})
const RECORDS = Number(values.records)
const RUNS = Number(values.runs)
const TARGET_MS = 100

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number

async function main (): Promise<void> {
  const net = await startTestNetwork()
  const root = await mkdtemp(join(tmpdir(), 'atmirror-bench-head-'))
  // a peer that accepts connections and never says a word
  const sockets = new Set<Socket>()
  const silent = createServer(socket => {
    sockets.add(socket)
    socket.on('close', () => { sockets.delete(socket) })
  })
  await new Promise<void>(resolve => { silent.listen(0, '127.0.0.1', resolve) })
  const silentId = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
  const silentAddr = `/ip4/127.0.0.1/tcp/${(silent.address() as AddressInfo).port}/p2p/${silentId.toString()}`
  const node = await createMirrorNode({
    dataDir: join(root, 'node'),
    plcUrl: net.plcUrl,
    allowHttpLocalhost: true,
    network: { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'], mirrors: { peers: [silentAddr] }, services: { reprovide: false } },
    api: false,
    checkOnStart: false,
    intervalMs: 0
  })
  try {
    await node.start()
    const account = await net.createAccount('bench')
    const records = Array.from({ length: RECORDS }, (_, i) => ({
      collection: 'app.bsky.feed.post',
      value: { text: `post ${i}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i)).toISOString() }
    }))
    await net.writeRecords(account, records)
    await node.pin(account.did)
    const pds = new PdsHeadResolver({ identity: node.identity })

    const round: number[] = []
    const sync: number[] = []
    for (let run = 0; run < RUNS; run++) {
      const identity = await node.identity.resolve(account.did, { verifyHandle: false })
      let started = performance.now()
      await pds.resolveHead(account.did, { identity })
      round.push(performance.now() - started)
      started = performance.now()
      const result = await node.sync(account.did)
      sync.push(performance.now() - started)
      if (result.changed) throw new Error('the repo changed during the benchmark')
    }

    const started = performance.now()
    const peers = await node.p2p?.heads.resolveHead(account.did).then(() => 'answered', (err: Error) => err.name)
    const peerMs = performance.now() - started

    const a = median(round)
    const b = median(sync)
    process.stdout.write(`(a) PDS round trip for a head (getLatestCommit + getBlocks, verified): ${a.toFixed(1)} ms median of ${RUNS}\n`)
    process.stdout.write(`(b) unchanged sync, peer lookup unanswered:                          ${b.toFixed(1)} ms median of ${RUNS} (min ${Math.min(...sync).toFixed(1)}, max ${Math.max(...sync).toFixed(1)})\n`)
    process.stdout.write(`the peer lookup alone (what a sync waited for before): ${(peerMs / 1000).toFixed(2)} s (${peers})\n\n`)
    process.stdout.write(`(b)/(a) = ${(b / a).toFixed(2)}; (b) = ${b.toFixed(1)} ms (target <= ${TARGET_MS} ms) ${b <= TARGET_MS ? 'OK' : 'BELOW TARGET'}\n`)
  } finally {
    await node.stop()
    for (const socket of sockets) socket.destroy()
    silent.close()
    await net.stop()
    await rm(root, { recursive: true, force: true })
  }
}

await main()
