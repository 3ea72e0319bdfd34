/**
 * A following daemon (a child process, real PDS + PLC) killed with SIGKILL while the
 * PDS keeps writing, then started again: it resumes the PDS's stream from the cursor
 * it persisted (the first event it handles is the one after it), nothing is lost
 * (the export equals the PDS's getRepo) and nothing is applied twice (every rev is
 * applied at most once over both runs, and the second run applies nothing at or
 * below the rev stored when the first was killed).
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { MirrorStore } from '../../src/mirror/store.ts'
import { exportStoredRepo } from '../../src/mirror/export.ts'
import { startTestNetwork, type TestAccount, type TestNetwork } from '../../support/network.ts'
import { collect } from '../helpers/bytes.ts'
import { splitCar } from '../helpers/car-tools.ts'
import { until } from '../helpers/until.ts'

const BIN = join(import.meta.dirname, '../../bin/atmirror.ts')

interface Daemon {
  child: ChildProcess
  events: Array<Record<string, any>>
  stderr: () => string
}

describe('a following daemon killed mid-stream', () => {
  let net: TestNetwork
  let alice: TestAccount
  let dir: string
  const daemons: Daemon[] = []

  before(async () => {
    net = await startTestNetwork()
    alice = await net.createAccount('alice')
    await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', value: { text: 'first', createdAt: new Date().toISOString() } }])
    dir = await mkdtemp(join(tmpdir(), 'atmirror-e2e-follow-crash-'))
  })

  after(async () => {
    for (const daemon of daemons) if (daemon.child.exitCode === null && daemon.child.signalCode === null) daemon.child.kill('SIGKILL')
    await net?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  async function startDaemon (): Promise<Daemon> {
    // polls only at start: from then on the firehose does the work
    const child = spawn(process.execPath, [BIN, 'daemon', '--offline', '--api', '0', '--data', dir, '--json', '--interval', '2147483', '--plc', net.plcUrl, '--handle-resolver', net.pdsUrl], { stdio: ['ignore', 'pipe', 'pipe'] })
    const events: Array<Record<string, any>> = []
    let stderr = ''
    let buffered = ''
    child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString()
      let newline: number
      while ((newline = buffered.indexOf('\n')) >= 0) {
        events.push(JSON.parse(buffered.slice(0, newline)) as Record<string, any>)
        buffered = buffered.slice(newline + 1)
      }
    })
    const daemon = { child, events, stderr: () => stderr }
    daemons.push(daemon)
    await until('the daemon started', () => {
      if (child.exitCode !== null) throw new Error(`daemon exited: ${stderr}`)
      return events.some(e => e.event === 'started')
    })
    return daemon
  }

  async function stored<T> (fn: (store: MirrorStore) => Promise<T>): Promise<T> {
    const store = await MirrorStore.open(dir)
    try {
      return await fn(store)
    } finally {
      await store.close()
    }
  }

  it('resumes from its cursor: nothing lost, nothing applied twice, export equals the PDS', async () => {
    const pinned = spawn(process.execPath, [BIN, 'pin', 'add', alice.did, '--data', dir, '--plc', net.plcUrl, '--handle-resolver', net.pdsUrl], { stdio: 'ignore' })
    assert.equal((await once(pinned, 'exit'))[0], 0)

    const first = await startDaemon()
    // the first connection has no cursor: the start check brings the repo up to date
    await until('the start check done', () => first.events.some(e => e.event === 'repo:synced' && e.did === alice.did))

    // the PDS writes on while the daemon follows, and while it is down
    let writing = true
    let writes = 0
    const writer = (async () => {
      while (writing) {
        if (writes % 3 === 2) await net.deleteRecord(alice, 'app.bsky.feed.post', `k${writes - 1}`)
        else await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', rkey: `k${writes}`, value: { text: `write ${writes}`, createdAt: new Date().toISOString() } }])
        writes++
      }
    })()
    const applied1 = (): Array<Record<string, any>> => first.events.filter(e => e.event === 'firehose:event' && e.outcome === 'applied')
    await until('ten commits applied from the firehose', () => applied1().length >= 10)
    first.child.kill('SIGKILL')
    await once(first.child, 'exit')
    const killedAtWrites = writes
    await until('more commits written while it is down', () => writes >= killedAtWrites + 5)

    // what the killed daemon left: its cursor and stored rev
    const { cursor, rev } = await stored(async (store) => {
      const value = await store.datastore.db.get(`/atmirror/cursors/${encodeURIComponent(new URL(net.pdsUrl).origin)}`)
      assert.ok(value !== undefined, 'a cursor was persisted')
      return { cursor: Number(new TextDecoder().decode(value)), rev: (await store.getState(alice.did))?.rev ?? '' }
    })

    const second = await startDaemon()
    await until('a few more commits written after the restart', () => writes >= killedAtWrites + 10)
    writing = false
    await writer
    const head = await net.getLatestCommit(alice.did)
    // the head's event handled (applied, or ignored when the start check got there first)
    await until('the stream replayed up to the head', () => second.events.some(e => e.event === 'firehose:event' && e.did === alice.did && e.rev === head.rev))
    await until('the stored repo at the head', () => second.events.some(e => e.event === 'repo:synced' && e.did === alice.did && e.rev === head.rev))

    const handled = second.events.filter(e => e.event === 'firehose:event')
    assert.equal(Math.min(...handled.map(e => e.seq as number)), cursor + 1, 'the stream resumed right after the persisted cursor')
    const applied2 = handled.filter(e => e.outcome === 'applied')
    for (const e of applied2) assert.ok((e.rev as string) > rev, `rev ${e.rev as string} applied again after the restart (stored: ${rev})`)
    const revs = [...applied1(), ...applied2].map(e => e.rev as string)
    assert.equal(new Set(revs).size, revs.length, 'no rev applied twice')

    second.child.kill('SIGINT')
    await once(second.child, 'exit')
    const ours = await stored(async (store) => splitCar(await collect(exportStoredRepo(store, alice.did))))
    const theirs = splitCar(await net.getRepoCar(alice.did))
    assert.equal(ours.roots[0].toString(), theirs.roots[0].toString())
    assert.deepEqual(ours.blocks.map(b => b.cid.toString()).sort(), theirs.blocks.map(b => b.cid.toString()).sort())
  })
})
