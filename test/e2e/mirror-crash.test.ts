/**
 * `atmirror mirror` killed with SIGKILL in the middle of a large sync: the stored
 * state has not moved, the next run completes the sync, the result verifies, and
 * every stored block is intact (hash-checked one by one) with nothing left over.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readdir, rm, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, before, describe, it } from 'node:test'
import { MirrorStore } from '../../src/mirror/store.ts'
import { parseCid } from '../../src/repo/cid.ts'
import { verifyRepo } from '../../src/repo/verify.ts'
import { checkEveryStoredBlock, storedBlocks } from '../mirror/helpers.ts'
import { startTestNetwork, type TestAccount, type TestNetwork } from './network.ts'

const CLI = join(import.meta.dirname, '../../bin/atmirror.ts')
const RECORDS = 4000

describe('a mirror killed mid-sync', () => {
  let net: TestNetwork
  let root: string
  let account: TestAccount

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-crash-'))
    account = await net.createAccount('crash')
    await net.writeRecords(account, Array.from({ length: RECORDS }, (_, i) => ({
      collection: 'app.bsky.feed.post',
      value: { text: `post ${i} ${'padding '.repeat(i % 11)}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, 0, i)).toISOString() }
    })))
  })

  after(async () => {
    await net?.stop()
    await rm(root, { recursive: true, force: true })
  })

  const env = (dir: string): NodeJS.ProcessEnv => ({ ...process.env, ATMIRROR_DATA: dir, ATMIRROR_PLC: net.plcUrl })

  /** Starts `atmirror mirror` and SIGKILLs it once some blocks are on disk; true when it died mid-sync. */
  async function killMidSync (dir: string): Promise<boolean> {
    const child = spawn(process.execPath, [CLI, 'mirror', account.did], { env: env(dir), stdio: 'ignore' })
    const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => { child.once('exit', (code, signal) => { resolve({ code, signal }) }) })
    let done = false
    void exited.then(() => { done = true })
    while (!done) {
      // shard directories appear as the first batches land
      const shards = await readdir(join(dir, 'blocks')).catch(() => [] as string[])
      if (shards.length > 100) {
        child.kill('SIGKILL')
        break
      }
      await sleep(2)
    }
    const { signal } = await exited
    return signal === 'SIGKILL'
  }

  it('leaves the state unchanged, and the next run completes a verified, intact repo', async () => {
    let dir = ''
    let killed = false
    for (let attempt = 0; attempt < 4 && !killed; attempt++) {
      dir = join(root, `data-${attempt}`)
      killed = await killMidSync(dir)
    }
    assert.ok(killed, 'the sync never ran long enough to be killed')

    // the kill left blocks behind but no state
    {
      const store = await MirrorStore.open(dir)
      try {
        assert.equal(await store.getState(account.did), undefined)
        const partial = await storedBlocks(dir)
        assert.ok(partial.length > 0)
        await checkEveryStoredBlock(dir, cid => store.blockstore.getBytesSync(cid))
      } finally {
        await store.close()
      }
    }

    const rerun = await new Promise<{ code: number | null, stdout: string, stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [CLI, 'mirror', account.did, '--json'], { env: env(dir) })
      let stdout = ''
      let stderr = ''
      child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
      child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
      child.once('exit', code => { resolve({ code, stdout, stderr }) })
    })
    assert.equal(rerun.code, 0, rerun.stderr)
    const result = JSON.parse(rerun.stdout)
    assert.equal(result.records, RECORDS)
    assert.equal(result.full, true)

    const store = await MirrorStore.open(dir)
    try {
      const state = await store.getState(account.did)
      assert.equal(state?.status, 'active')
      const summary = await verifyRepo(store.blocks, parseCid(state?.commit as string), { did: account.did })
      assert.equal(summary.records, RECORDS)
      const checked = await checkEveryStoredBlock(dir, cid => store.blockstore.getBytesSync(cid))
      // nothing but the repo is left: blocks of the killed run were either used or collected
      assert.equal(checked, summary.blocks)
      for (const shard of await readdir(join(dir, 'blocks'))) {
        if (shard.startsWith('.')) continue
        assert.deepEqual((await readdir(join(dir, 'blocks', shard))).filter(name => name.endsWith('.tmp')), [], `temp files left in ${shard}`)
      }
    } finally {
      await store.close()
    }
  })
})
