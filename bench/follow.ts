/**
 * Live following against a real local PDS (support/network.ts), in four parts:
 *
 * 1. Live: `--accounts` accounts write continuously (applyWrites of 1–10 ops, about
 *    `--rate` commits a second in all, a fifth of the ops deleting earlier records)
 *    for `--seconds` while a node follows the PDS's firehose (no polling). Measured:
 *    from each write's acknowledgement to the stored repo reaching its rev (then
 *    Bitswap and `block get` serve it), and from each deleting write's
 *    acknowledgement to the deleted record's block being gone from disk.
 * 2. Takedown: `--takedowns` more pinned accounts are taken down through the PDS
 *    admin API; measured until the repo's commit block is gone.
 * 3. Replay from cursor 0 over at least `--events` events (bulk accounts write until
 *    the PDS's sequence gets there). Two child processes read the same stream in
 *    turn, each timing itself and its own CPU: atmirror (a node on a data directory
 *    holding the bulk accounts as they were before their first write, cursor 0: each
 *    `#commit` verified and applied to the store) and, as the baseline,
 *    `@atproto/sync`'s Firehose client (signatures and op proofs checked, nothing
 *    stored, no prevData).
 * 4. A one-record change on a 100,000-record repo through the firehose path and the
 *    getRepo?since path: bench/incremental.ts's `benchIncremental` (skip with
 *    `--no-incremental`).
 *
 *   node bench/follow.ts [--accounts 4] [--rate 10] [--seconds 30] [--takedowns 5] [--events 50000] [--no-incremental]
 */
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { createMirrorNode, type MirrorNode } from '../src/node.ts'
import { MirrorStore } from '../src/mirror/store.ts'
import { parseCid, type CID } from '../src/repo/cid.ts'
import { startTestNetwork, type TestAccount, type TestNetwork } from '../support/network.ts'

const { values } = parseArgs({
  options: {
    accounts: { type: 'string', default: '4' },
    rate: { type: 'string', default: '10' },
    seconds: { type: 'string', default: '30' },
    takedowns: { type: 'string', default: '5' },
    events: { type: 'string', default: '50000' },
    'no-incremental': { type: 'boolean', default: false },
    // internal: a replay child
    worker: { type: 'string' },
    data: { type: 'string' },
    plc: { type: 'string' },
    pds: { type: 'string' },
    'until-seq': { type: 'string' }
  }
})

const LAG_TARGET_MS = 1000
const UNSERVABLE_TARGET_MS = 2000

function percentile (samples: number[], p: number): number {
  if (samples.length === 0) return NaN
  const sorted = [...samples].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil(p / 100 * sorted.length) - 1)]
}

const ms = (n: number): string => Number.isFinite(n) ? `${n.toFixed(0)} ms` : '-'
const verdict = (ok: boolean): string => ok ? 'OK' : 'MISSED'

interface ApplyWritesOutput { commit: { cid: string, rev: string }, results: Array<{ uri?: string, cid?: string }> }

async function applyWrites (net: TestNetwork, account: TestAccount, writes: unknown[]): Promise<ApplyWritesOutput> {
  const res = await fetch(`${net.pdsUrl}/xrpc/com.atproto.repo.applyWrites`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${account.accessJwt}` },
    body: JSON.stringify({ repo: account.did, validate: false, writes })
  })
  if (!res.ok) throw new Error(`applyWrites ${res.status}: ${await res.text()}`)
  return await res.json() as ApplyWritesOutput
}

let counter = 0
const createOf = (rkey: string): Record<string, unknown> => ({
  $type: 'com.atproto.repo.applyWrites#create',
  collection: 'app.bsky.feed.post',
  rkey,
  value: { $type: 'app.bsky.feed.post', text: `post ${counter++} ${Math.random()}`, createdAt: new Date().toISOString() }
})

async function waitFor (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

async function latestSeq (net: TestNetwork): Promise<number> {
  const pds = net.pds
  if (pds === undefined) throw new Error('PDS not running')
  return await pds.ctx.sequencer.curr() ?? 0
}

// ---------------------------------------------------------------------------
// replay children
// ---------------------------------------------------------------------------

async function atmirrorWorker (): Promise<void> {
  const untilSeq = Number(values['until-seq'])
  const node = await createMirrorNode({
    dataDir: values.data as string,
    plcUrl: values.plc,
    allowHttpLocalhost: true,
    network: false,
    api: false,
    intervalMs: 0,
    checkOnStart: false,
    follow: {}
  })
  const outcomes: Record<string, number> = {}
  node.events.addEventListener('firehose:event', (evt) => { outcomes[evt.detail.outcome] = (outcomes[evt.detail.outcome] ?? 0) + 1 })
  const cpu = process.cpuUsage()
  const started = performance.now()
  await node.start()
  // status() reads every pin's state: asked every 200 ms, not every 5, so the poll
  // does not take the CPU the replay is measured on (at most 0.2 s late)
  const deadline = Date.now() + 1_800_000
  while (((await node.status()).subscriptions?.[0]?.cursor ?? 0) < untilSeq) {
    if (Date.now() > deadline) throw new Error('timed out waiting for the replay')
    await sleep(200)
  }
  const seconds = (performance.now() - started) / 1000
  const used = process.cpuUsage(cpu)
  await node.stop()
  process.stdout.write(JSON.stringify({ seconds, cpuMs: (used.user + used.system) / 1000, outcomes }) + '\n')
}

async function baselineWorker (): Promise<void> {
  const untilSeq = Number(values['until-seq'])
  const [{ Firehose }, { getDidKeyFromMultibase }] = await Promise.all([import('@atproto/sync'), import('@atproto/identity')])
  // the keys from the PLC directory, cached as IdResolver would (its own fetch
  // refuses the test network's http:// URLs); the client verifies every signature
  const keys = new Map<string, Promise<string>>()
  const resolveAtprotoKey = async (did: string): Promise<string> => {
    let key = keys.get(did)
    if (key === undefined) {
      key = (async () => {
        const doc = await (await fetch(`${values.plc as string}/${did}`)).json() as { verificationMethod: Array<{ id: string, type: string, publicKeyMultibase: string }> }
        const method = doc.verificationMethod.find(m => m.id.endsWith('#atproto'))
        const key = method === undefined ? undefined : getDidKeyFromMultibase(method)
        if (key === undefined || key === null) throw new Error(`no #atproto key for ${did}`)
        return key
      })()
      keys.set(did, key)
    }
    return await key
  }
  const idResolver = { did: { resolveAtprotoKey, resolve: async () => null } } as unknown as ConstructorParameters<typeof Firehose>[0]['idResolver']
  let last = 0
  let errors = 0
  let finish!: () => void
  const done = new Promise<void>(resolve => { finish = resolve })
  const service = (values.pds as string).replace(/^http/, 'ws')
  const firehose = new Firehose({
    idResolver,
    service,
    getCursor: async () => 0,
    handleEvent: async (evt) => {
      last = Math.max(last, evt.seq)
      if (last >= untilSeq) finish()
    },
    onError: (err) => {
      if (errors++ === 0) process.stderr.write(`baseline: first error: ${err.message}: ${String((err as { cause?: unknown }).cause)}\n`)
    }
  })
  const cpu = process.cpuUsage()
  const started = performance.now()
  void firehose.start()
  await done
  const seconds = (performance.now() - started) / 1000
  const used = process.cpuUsage(cpu)
  await firehose.destroy()
  process.stdout.write(JSON.stringify({ seconds, cpuMs: (used.user + used.system) / 1000, errors }) + '\n')
}

async function runWorker (kind: string, args: string[]): Promise<{ seconds: number, cpuMs: number, outcomes?: Record<string, number>, errors?: number }> {
  const child = spawn(process.execPath, [import.meta.filename, '--worker', kind, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const code = await new Promise<number | null>(resolve => child.once('exit', resolve))
  if (code !== 0) throw new Error(`${kind} replay exited with ${code}`)
  return JSON.parse(out.trim().split('\n').at(-1) as string)
}

// ---------------------------------------------------------------------------
// the bench
// ---------------------------------------------------------------------------

async function main (): Promise<void> {
  const accounts = Number(values.accounts)
  const rate = Number(values.rate)
  const seconds = Number(values.seconds)
  const takedowns = Number(values.takedowns)
  const wantEvents = Number(values.events)
  const net = await startTestNetwork()
  const root = await mkdtemp(join(tmpdir(), 'atmirror-bench-follow-'))
  let node: MirrorNode | undefined
  try {
    const writers: TestAccount[] = []
    for (let i = 0; i < accounts; i++) writers.push(await net.createAccount('writer'))
    const doomed: TestAccount[] = []
    for (let i = 0; i < takedowns; i++) doomed.push(await net.createAccount('doomed'))
    for (const account of [...writers, ...doomed]) await applyWrites(net, account, [createOf(`seed${counter}`)])

    node = await createMirrorNode({ dataDir: join(root, 'live'), plcUrl: net.plcUrl, allowHttpLocalhost: true, network: false, api: false, intervalMs: 0, checkOnStart: false, follow: {} })
    for (const account of [...writers, ...doomed]) await node.pin(account.did)
    await node.start()
    const live = node
    await waitFor('the stream connected', async () => (await live.status()).subscriptions?.[0]?.state === 'connected')
    await waitFor('the first check', async () => (await live.status()).repos.every(r => !r.syncing))

    // 1. live writes
    const pending = new Map<string, Array<{ rev: string, ackAt: number }>>()
    const lags: number[] = []
    /** The rev each repo was last advanced to (an event can be applied before the write's answer arrives). */
    const appliedRev = new Map<string, string>()
    live.events.addEventListener('repo:synced', (evt) => {
      const now = performance.now()
      if (evt.detail.rev > (appliedRev.get(evt.detail.did) ?? '')) appliedRev.set(evt.detail.did, evt.detail.rev)
      const waiting = pending.get(evt.detail.did)
      if (waiting === undefined) return
      const left = waiting.filter(w => {
        if (w.rev > evt.detail.rev) return true
        lags.push(now - w.ackAt)
        return false
      })
      pending.set(evt.detail.did, left)
    })
    const deletions: Array<{ cid: CID, ackAt: number, goneAt?: number }> = []
    let commits = 0
    let ops = 0
    const endAt = performance.now() + seconds * 1000
    const perWriterMs = 1000 * accounts / rate
    // the writes still in flight at endAt are acknowledged after it: the watch below
    // ends only once every writer has stopped, so their commits and deletions count
    let writing = true
    const writersDone = Promise.all(writers.map(async (account) => {
      const mine: Array<{ rkey: string, cid: string }> = []
      let next = performance.now() + Math.random() * perWriterMs
      while (performance.now() < endAt) {
        await sleep(Math.max(0, next - performance.now()))
        next += perWriterMs
        const n = 1 + Math.floor(Math.random() * 10)
        const writes: Array<Record<string, unknown>> = []
        const deleting: string[] = []
        for (let i = 0; i < n; i++) {
          if (mine.length > 0 && Math.random() < 0.2) {
            const [victim] = mine.splice(Math.floor(Math.random() * mine.length), 1)
            writes.push({ $type: 'com.atproto.repo.applyWrites#delete', collection: 'app.bsky.feed.post', rkey: victim.rkey })
            deleting.push(victim.cid)
          } else {
            writes.push(createOf(`r${counter}x${Math.floor(Math.random() * 1e9)}`))
          }
        }
        const out = await applyWrites(net, account, writes)
        const ackAt = performance.now()
        commits++
        ops += n
        if ((appliedRev.get(account.did) ?? '') >= out.commit.rev) {
          lags.push(0) // servable before the PDS answered
        } else {
          const list = pending.get(account.did) ?? []
          list.push({ rev: out.commit.rev, ackAt })
          pending.set(account.did, list)
        }
        for (const cid of deleting) deletions.push({ cid: parseCid(cid), ackAt })
        out.results.forEach((result, i) => {
          if (result.cid !== undefined && writes[i].$type === 'com.atproto.repo.applyWrites#create') mine.push({ rkey: writes[i].rkey as string, cid: result.cid })
        })
      }
    })).finally(() => { writing = false })
    await Promise.all([writersDone, (async () => {
      // deletions become unservable when the block file is gone; at most 60 s after the writes stopped
      let quietAt: number | undefined
      while (quietAt === undefined || performance.now() < quietAt + 60_000) {
        for (const d of deletions) {
          if (d.goneAt === undefined && !live.store.blockstore.hasSync(d.cid)) d.goneAt = performance.now()
        }
        if (!writing) {
          quietAt ??= performance.now()
          if (deletions.every(d => d.goneAt !== undefined) && [...pending.values()].every(l => l.length === 0)) break
        }
        await sleep(2)
      }
    })()])
    const deletionLags = deletions.filter(d => d.goneAt !== undefined).map(d => (d.goneAt as number) - d.ackAt)
    const unapplied = [...pending.values()].reduce((n, l) => n + l.length, 0)
    // taken now, with the count above: a commit applied later (during the takedowns) is not a live lag
    const liveLags = [...lags]

    // 2. takedowns
    const takedownLags: number[] = []
    for (const account of doomed) {
      const commit = parseCid((await live.getState(account.did)).commit)
      await net.takedownAccount(account.did)
      const ackAt = performance.now()
      await waitFor(`${account.did} unservable`, async () => (await live.store.getState(account.did))?.status === 'takendown' && !live.store.blockstore.hasSync(commit), 30_000)
      takedownLags.push(performance.now() - ackAt)
    }
    await live.stop()
    node = undefined

    console.log(`live: ${accounts} accounts, ${commits} commits (${ops} ops) in ${seconds} s = ${(commits / seconds).toFixed(1)} commits/s; ${unapplied} not applied`)
    console.log(`lag write-ack -> servable: p50 ${ms(percentile(liveLags, 50))}, p99 ${ms(percentile(liveLags, 99))} over ${liveLags.length} commits  (target p99 <= ${LAG_TARGET_MS} ms)  ${verdict(percentile(liveLags, 99) <= LAG_TARGET_MS && unapplied === 0)}`)
    console.log(`deletion unservable (block file gone): p50 ${ms(percentile(deletionLags, 50))}, p99 ${ms(percentile(deletionLags, 99))} over ${deletionLags.length} of ${deletions.length} records  (target p99 <= ${UNSERVABLE_TARGET_MS} ms)  ${verdict(percentile(deletionLags, 99) <= UNSERVABLE_TARGET_MS && deletionLags.length === deletions.length)}`)
    if (takedowns > 0) console.log(`takedown unservable (status + commit block gone): p50 ${ms(percentile(takedownLags, 50))}, p99 ${ms(percentile(takedownLags, 99))} over ${takedownLags.length}  (target p99 <= ${UNSERVABLE_TARGET_MS} ms)  ${verdict(percentile(takedownLags, 99) <= UNSERVABLE_TARGET_MS)}`)

    // 3. replay from cursor 0
    if (wantEvents > 0) {
      const bulk: TestAccount[] = []
      for (let i = 0; i < 10; i++) bulk.push(await net.createAccount('bulk'))
      const replayDir = join(root, 'replay')
      const seeding = await createMirrorNode({ dataDir: replayDir, plcUrl: net.plcUrl, allowHttpLocalhost: true, network: false, api: false, follow: false })
      try {
        for (const account of bulk) await seeding.pin(account.did)
      } finally {
        await seeding.stop()
      }
      const store = await MirrorStore.open(replayDir)
      try {
        await store.datastore.db.put(`/atmirror/cursors/${encodeURIComponent(new URL(net.pdsUrl).origin)}`, new TextEncoder().encode('0'))
      } finally {
        await store.close()
      }
      const generating = performance.now()
      let untilSeq = await latestSeq(net)
      await Promise.all(bulk.map(async (account) => {
        while ((untilSeq = await latestSeq(net)) < wantEvents) {
          await applyWrites(net, account, Array.from({ length: 1 + Math.floor(Math.random() * 3) }, () => createOf(`b${counter}x${Math.floor(Math.random() * 1e9)}`)))
        }
      }))
      untilSeq = await latestSeq(net)
      console.log(`replay stream: ${untilSeq} events on the PDS (${((performance.now() - generating) / 1000).toFixed(0)} s to write)`)
      const args = ['--plc', net.plcUrl, '--pds', net.pdsUrl, '--until-seq', String(untilSeq)]
      const baseline = await runWorker('baseline', args)
      const ours = await runWorker('atmirror', [...args, '--data', replayDir])
      const baseRate = untilSeq / baseline.seconds
      const ourRate = untilSeq / ours.seconds
      console.log(`(a) baseline @atproto/sync Firehose (signatures + op proofs, stores nothing): ${baseline.seconds.toFixed(1)} s, ${baseRate.toFixed(0)} events/s, CPU ${(baseline.cpuMs / untilSeq).toFixed(2)} ms/event${baseline.errors !== undefined && baseline.errors > 0 ? `, ${baseline.errors} errors` : ''}`)
      console.log(`(b) atmirror follow (signature, sync 1.1 proof, prevData, incremental verification, staged write + advance + GC): ${ours.seconds.toFixed(1)} s, ${ourRate.toFixed(0)} events/s, CPU ${(ours.cpuMs / untilSeq).toFixed(2)} ms/event; outcomes ${JSON.stringify(ours.outcomes)}`)
      console.log(`(b)/(a) events/s = ${(ourRate / baseRate).toFixed(2)}  (target >= 1)  ${verdict(ourRate >= baseRate)}`)
    }
  } finally {
    await node?.stop().catch(() => {})
    await net.stop()
    await rm(root, { recursive: true, force: true })
  }

  // 4. one-record change on a 100,000-record repo
  if (values['no-incremental'] !== true) {
    const { benchIncremental, TARGET_MS } = await import('./incremental.ts')
    const result = await benchIncremental({ runs: 5, log: (line) => { console.log(`  ${line}`) } })
    console.log(`one-record change on a ${result.records}-record repo: firehose path ${result.firehose.ms.toFixed(1)} ms (${result.firehose.blocksRead} blocks read), getRepo?since path ${result.since.ms.toFixed(1)} ms (${result.since.blocksRead} blocks read)  (target <= ${TARGET_MS} ms)  ${verdict(result.firehose.ms <= TARGET_MS && result.since.ms <= TARGET_MS)}`)
  }
}

if (values.worker === 'atmirror') await atmirrorWorker()
else if (values.worker === 'baseline') await baselineWorker()
else await main()
