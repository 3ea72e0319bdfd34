/**
 * `atmirror mirror` stopped in the middle of a sync, against a real PDS:
 *
 * - SIGKILL during a large first sync: no state; the blocks it left are collected
 *   when the store next opens; the rerun completes a verified, intact repo.
 * - SIGKILL during an incremental sync over a stored state: the previous state is
 *   intact right after the kill and verifies from the store; the rerun completes.
 * - SIGINT (Ctrl-C) during an incremental sync: the process itself discards what
 *   it had staged and exits with the last good state.
 *
 * Each run is stopped once its progress output (`--progress`) shows blocks stored
 * by the new sync, before its advance.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readdir, rm, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { LevelDatastore } from 'datastore-level'
import { holdKeys } from '../../src/mirror/gc.ts'
import { MirrorStore, type RepoState } from '../../src/mirror/store.ts'
import { parseCid } from '../../src/repo/cid.ts'
import { verifyRepo } from '../../src/repo/verify.ts'
import { BLOCKSTORE_KINDS, checkEveryStoredBlock, storedBlocks } from '../helpers/blocks.ts'
import { readBlockstoreKind } from '../../src/mirror/blockstore.ts'
import { startTestNetwork, type TestAccount, type TestNetwork, type TestRecord } from '../../support/network.ts'

const CLI = join(import.meta.dirname, '../../bin/atmirror.ts')
const RECORDS = 4000

const posts = (n: number, tag: string): TestRecord[] => Array.from({ length: n }, (_, i) => ({
  collection: 'app.bsky.feed.post',
  value: { text: `${tag} post ${i} ${'padding '.repeat(i % 11)}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, 0, i)).toISOString() }
}))

interface Run {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** The progress line the signal was sent on, if it was sent. */
  sentAt?: string
}

/** The datastore's keys under `prefix`, read with the process stopped and before MirrorStore opens (and sweeps) it. */
async function rawKeys (dir: string, prefix: string): Promise<string[]> {
  const datastore = new LevelDatastore(join(dir, 'datastore'))
  await datastore.open()
  try {
    return await datastore.db.keys({ gte: prefix, lt: prefix + '\xff' }).all()
  } finally {
    await datastore.close()
  }
}

/** Temp files of the fs kind's writes (the level kind writes none). */
async function tempFiles (dir: string): Promise<string[]> {
  const out: string[] = []
  if (readBlockstoreKind(dir) !== 'fs') return out
  for (const shard of await readdir(join(dir, 'blocks'))) {
    if (shard.startsWith('.')) continue
    for (const name of await readdir(join(dir, 'blocks', shard))) if (name.endsWith('.tmp')) out.push(`${shard}/${name}`)
  }
  return out
}

for (const kind of BLOCKSTORE_KINDS) describe(`a mirror stopped mid-sync (${kind} store)`, () => {
  let net: TestNetwork
  let root: string
  let account: TestAccount
  /** The data directory the three cases share: each starts from what the last left. */
  let dir = ''
  let records = RECORDS

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-crash-'))
    account = await net.createAccount('crash')
    await net.writeRecords(account, posts(RECORDS, 'first'))
  })

  after(async () => {
    await net?.stop()
    await rm(root, { recursive: true, force: true })
  })

  const env = (data: string): NodeJS.ProcessEnv => ({ ...process.env, ATMIRROR_DATA: data, ATMIRROR_PLC: net.plcUrl, DEBUG: '' })

  /**
   * Runs `atmirror mirror --json --progress` and sends `signal` as soon as a progress
   * line shows blocks this sync stored (download, walk or verify: before the advance).
   */
  async function mirror (data: string, signal?: NodeJS.Signals): Promise<Run> {
    const child = spawn(process.execPath, [CLI, 'mirror', account.did, '--json', '--progress', '--blockstore', kind], { env: env(data), stdio: ['ignore', 'pipe', 'pipe'] })
    const run: Run = { code: null, signal: null, stdout: '', stderr: '' }
    let pending = ''
    child.stdout.on('data', (chunk: Buffer) => { run.stdout += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => {
      run.stderr += chunk.toString()
      pending += chunk.toString()
      let newline: number
      while ((newline = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, newline)
        pending = pending.slice(newline + 1)
        const progress = /^(download|walk|verify) +(\d+) blocks/.exec(line)
        if (signal !== undefined && run.sentAt === undefined && progress !== null && Number(progress[2]) > 0) {
          run.sentAt = line
          child.kill(signal)
        }
      }
    })
    await new Promise<void>(resolve => {
      child.once('exit', (code, sig) => {
        run.code = code
        run.signal = sig
        resolve()
      })
    })
    return run
  }

  /** The stored state, and the number of blocks its repo has, after checking that it verifies. */
  async function storedState (data: string): Promise<{ state: RepoState | undefined, blocks: number, records: number }> {
    const store = await MirrorStore.open(data)
    try {
      const state = await store.getState(account.did)
      if (state === undefined) return { state, blocks: 0, records: 0 }
      const summary = await verifyRepo(store.blocks, parseCid(state.commit), { did: account.did })
      return { state, blocks: summary.blocks, records: summary.records }
    } finally {
      await store.close()
    }
  }

  /** Reruns the mirror to completion and checks the stored repo, block by block, with nothing left over. */
  async function rerunAndCheck (data: string, expect: { records: number, full: boolean }): Promise<void> {
    const rerun = await mirror(data)
    assert.equal(rerun.code, 0, rerun.stderr)
    const result = JSON.parse(rerun.stdout)
    assert.equal(result.records, expect.records)
    assert.equal(result.full, expect.full)
    assert.equal(result.changed, true)
    // --progress ends with a final line
    assert.match(rerun.stderr.trimEnd().split('\n').at(-1) ?? '', /^commit +\d+ blocks/)

    const store = await MirrorStore.open(data)
    try {
      const state = await store.getState(account.did)
      assert.equal(state?.status, 'active')
      assert.equal(state?.rev, (await net.getLatestCommit(account.did)).rev)
      const summary = await verifyRepo(store.blocks, parseCid(state?.commit as string), { did: account.did })
      assert.equal(summary.records, expect.records)
      const checked = await checkEveryStoredBlock(store, cid => store.blockstore.getBytesSync(cid))
      // nothing but the repo is left: blocks of the stopped run were either used or collected
      assert.equal(checked, summary.blocks)
      assert.deepEqual(await tempFiles(data), [])
    } finally {
      await store.close()
    }
    assert.deepEqual(await rawKeys(data, holdKeys.stagedAll), [])
  }

  /**
   * Stops an incremental mirror with `signal`; when the run ends before the signal
   * lands (the sync was quicker), the PDS gets more records and it is tried again.
   */
  async function stopIncremental (signal: NodeJS.Signals): Promise<{ run: Run, before: { state: RepoState, blocks: number, records: number } }> {
    for (let attempt = 0; attempt < 3; attempt++) {
      await net.writeRecords(account, posts(1600, `batch ${signal} ${attempt}`))
      records += 1600
      const before = await storedState(dir)
      assert.ok(before.state !== undefined)
      const run = await mirror(dir, signal)
      if (run.sentAt !== undefined && run.code !== 0) return { run, before: before as { state: RepoState, blocks: number, records: number } }
      // too late: the sync got through; its result is the new previous state
      assert.equal(run.code, 0, run.stderr)
    }
    throw new Error(`the incremental sync never ran long enough to be stopped by ${signal}`)
  }

  it('SIGKILL during the first sync: no state; the blocks it left are collected when the store opens; the rerun completes', async () => {
    let run: Run | undefined
    for (let attempt = 0; attempt < 4 && run?.signal !== 'SIGKILL'; attempt++) {
      dir = join(root, `data-${attempt}`)
      run = await mirror(dir, 'SIGKILL')
    }
    assert.equal(run?.signal, 'SIGKILL', 'the sync never ran long enough to be killed')

    // what the kill left: block files, and the staging list that names them
    const left = await storedBlocks(dir)
    assert.ok(left.length > 0)
    const staged = await rawKeys(dir, holdKeys.stagedAll)
    assert.ok(staged.length > 0 && staged.every(key => key.startsWith(holdKeys.stagedPrefix(account.did))), staged.join(', '))

    // the DID is not pinned (pin rm would refuse it); opening the store releases it all
    {
      const store = await MirrorStore.open(dir)
      try {
        assert.equal(await store.getState(account.did), undefined)
        assert.equal(await store.pins.has(account.did), false)
        assert.deepEqual(await storedBlocks(store), [])
        assert.equal(await store.holds.hasCandidates(), false)
      } finally {
        await store.close()
      }
    }
    assert.deepEqual(await rawKeys(dir, holdKeys.stagedAll), [])

    await rerunAndCheck(dir, { records: RECORDS, full: true })
  })

  it('SIGKILL during an incremental sync: the previous state is intact, and the rerun completes and releases the leftovers', async () => {
    assert.notEqual(dir, '', 'runs after the first case')
    const { run, before } = await stopIncremental('SIGKILL')
    assert.equal(run.signal, 'SIGKILL')

    // right after the kill: the new sync's blocks on disk and in its staging list
    const killedBlocks = (await storedBlocks(dir)).length
    assert.ok(killedBlocks > before.blocks, 'the killed sync had stored blocks')
    assert.ok((await rawKeys(dir, holdKeys.stagedAll)).length > 0)
    // the previous state has not moved and its repo verifies from the store; the DID
    // is pinned, so opening the store keeps the killed sync's staged blocks for the
    // next sync of it rather than collecting them
    const after = await storedState(dir)
    assert.deepEqual(after.state, before.state)
    assert.equal(after.records, before.records)
    assert.equal((await storedBlocks(dir)).length, killedBlocks)
    assert.ok((await rawKeys(dir, holdKeys.stagedAll)).length > 0)

    // the rerun advances and leaves nothing over: no staging list, no stray block
    await rerunAndCheck(dir, { records, full: false })
  })

  it('SIGINT during an incremental sync: the process discards what it staged and keeps the last good state', async () => {
    assert.notEqual(dir, '', 'runs after the first case')
    const { run, before } = await stopIncremental('SIGINT')
    // it stopped itself, reporting the abort
    assert.equal(run.signal, null)
    assert.equal(run.code, 1)
    assert.equal(JSON.parse(run.stdout).error?.name, 'AbortError')
    // --progress ended on the figures where it stopped: blocks of the new sync
    assert.match(run.stderr.trimEnd().split('\n').at(-1) ?? '', /^(download|walk|verify|commit) +[1-9]\d* blocks/)

    // before anything opens the store again: no staging list, no pending candidate,
    // and only the previous repo's blocks on disk
    assert.deepEqual(await rawKeys(dir, holdKeys.stagedAll), [])
    assert.deepEqual(await rawKeys(dir, holdKeys.candidatePrefix), [])
    assert.equal((await storedBlocks(dir)).length, before.blocks)
    const after = await storedState(dir)
    assert.deepEqual(after.state, before.state)
    assert.equal(after.records, before.records)

    await rerunAndCheck(dir, { records, full: false })
  })
})
