import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { acquireDataDirLock, ensureDataDir, lockPath, readHolder } from '../../src/mirror/lock.ts'

const LOCK_MODULE = join(import.meta.dirname, '../../src/mirror/lock.ts')
const dirs: string[] = []

async function tempDir (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'atmirror-lock-'))
  dirs.push(dir)
  return dir
}

/**
 * A child process that tries to take the lock, prints `locked` or the error name,
 * and (when it got the lock) holds it until killed or for `holdMs`.
 */
function lockChild (dir: string, holdMs = 60_000): ChildProcess {
  const script = `
    import { acquireDataDirLock } from ${JSON.stringify(LOCK_MODULE)}
    try {
      const lock = await acquireDataDirLock(${JSON.stringify(dir)})
      process.stdout.write('locked\\n')
      setTimeout(() => { void lock.release() }, ${holdMs})
    } catch (err) {
      process.stdout.write(err.name + '\\n')
    }
  `
  return spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
}

async function firstLine (child: ChildProcess): Promise<string> {
  let text = ''
  for await (const chunk of child.stdout as AsyncIterable<Buffer>) {
    text += chunk.toString()
    if (text.includes('\n')) break
  }
  return text.trim()
}

/** A pid that certainly runs no process: a child that has exited. */
async function deadPid (): Promise<number> {
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
  await once(child, 'exit')
  return child.pid as number
}

after(async () => {
  await Promise.all(dirs.map(async dir => await rm(dir, { recursive: true, force: true })))
})

describe('data directory lock', () => {
  it('records the holder and refuses a second taker in the same process', async () => {
    const dir = await tempDir()
    const lock = await acquireDataDirLock(dir)
    const holder = await readHolder(lockPath(dir))
    assert.equal(holder?.pid, process.pid)
    await assert.rejects(acquireDataDirLock(dir), (err: Error & { path?: string }) => {
      assert.equal(err.name, 'DataDirLockedError')
      assert.equal(err.path, dir)
      assert.match(err.message, new RegExp(`pid=${process.pid}`))
      return true
    })
    await lock.release()
    const again = await acquireDataDirLock(dir)
    await again.release()
    assert.equal(await readHolder(lockPath(dir)), undefined)
  })

  it('release is idempotent and leaves no temp files', async () => {
    const dir = await tempDir()
    const lock = await acquireDataDirLock(dir)
    await lock.release()
    await lock.release()
    assert.deepEqual(await readdir(dir), [])
  })

  it('refuses while another live process holds it, naming its pid', async () => {
    const dir = await tempDir()
    const child = lockChild(dir)
    try {
      assert.equal(await firstLine(child), 'locked')
      await assert.rejects(acquireDataDirLock(dir), (err: Error) => {
        assert.equal(err.name, 'DataDirLockedError')
        assert.match(err.message, new RegExp(`pid=${child.pid}`))
        return true
      })
    } finally {
      child.kill('SIGKILL')
      await once(child, 'exit').catch(() => {})
    }
  })

  it('takes over the lock of a process killed with SIGKILL', async () => {
    const dir = await tempDir()
    const child = lockChild(dir)
    assert.equal(await firstLine(child), 'locked')
    child.kill('SIGKILL')
    await once(child, 'exit')
    assert.equal((await readHolder(lockPath(dir)))?.pid, child.pid)
    const lock = await acquireDataDirLock(dir)
    assert.equal((await readHolder(lockPath(dir)))?.pid, process.pid)
    await lock.release()
  })

  it('takes over a lock whose pid now belongs to another process (pid reuse)', async () => {
    const dir = await tempDir()
    const bootId = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim()
    // the parent process is alive, but it is not the process that took this lock
    const record = { pid: process.ppid, host: hostname(), nonce: 'reused', since: new Date().toISOString(), bootId, startTime: '1' }
    await writeFile(lockPath(dir), JSON.stringify(record))
    const lock = await acquireDataDirLock(dir)
    assert.equal((await readHolder(lockPath(dir)))?.pid, process.pid)
    await lock.release()
  })

  it('treats a lock held on another host as alive', async () => {
    const dir = await tempDir()
    const record = { pid: await deadPid(), host: `not-${hostname()}`, nonce: 'remote', since: new Date().toISOString() }
    await writeFile(lockPath(dir), JSON.stringify(record))
    await assert.rejects(acquireDataDirLock(dir), { name: 'DataDirLockedError' })
    assert.equal((await readHolder(lockPath(dir)))?.nonce, 'remote')
  })

  it('takes over a lock file that holds garbage', async () => {
    const dir = await tempDir()
    await writeFile(lockPath(dir), 'not json')
    const lock = await acquireDataDirLock(dir)
    assert.equal((await readHolder(lockPath(dir)))?.pid, process.pid)
    await lock.release()
  })

  it('lets exactly one of several racing processes take over a stale lock', async () => {
    const dir = await tempDir()
    const record = { pid: await deadPid(), host: hostname(), nonce: 'stale', since: new Date().toISOString() }
    await writeFile(lockPath(dir), JSON.stringify(record))
    // the winner holds the lock until killed: a child started late on a loaded machine must still find it held
    const children = Array.from({ length: 6 }, () => lockChild(dir))
    try {
      const results = await Promise.all(children.map(firstLine))
      assert.equal(results.filter(line => line === 'locked').length, 1, results.join(','))
      assert.equal(results.filter(line => line === 'DataDirLockedError').length, 5, results.join(','))
      const winner = children[results.indexOf('locked')]
      assert.equal((await readHolder(lockPath(dir)))?.pid, winner?.pid)
    } finally {
      for (const child of children) child.kill('SIGKILL')
      await Promise.all(children.map(async child => { if (child.exitCode === null && child.signalCode === null) await once(child, 'exit') }))
    }
  })
})

describe('creating the data directory', () => {
  const made: string[] = []
  after(async () => {
    await Promise.all(made.map(async dir => await rm(dir, { recursive: true, force: true })))
  })

  it('creates missing parents, mode 0700', async () => {
    const root = await mkdtemp(join(tmpdir(), 'atmirror-ensure-'))
    made.push(root)
    const dir = join(root, 'a', 'b', 'c')
    await ensureDataDir(dir)
    const { stat } = await import('node:fs/promises')
    const info = await stat(dir)
    assert.ok(info.isDirectory())
    assert.equal(info.mode & 0o777, 0o700)
    await ensureDataDir(dir) // and again: it exists
  })

  it('a filesystem that refuses (/proc) is DataDirError at once, not a busy loop', async () => {
    // Node's mkdir(…, { recursive: true }) spins forever on this path
    const started = performance.now()
    await assert.rejects(ensureDataDir('/proc/atmirror-test/data'), { name: 'DataDirError', code: 'ENOENT', path: '/proc/atmirror-test' })
    assert.ok(performance.now() - started < 5000)
  })

  it('a path through a file is DataDirError ENOTDIR', async () => {
    const root = await mkdtemp(join(tmpdir(), 'atmirror-ensure-'))
    made.push(root)
    await writeFile(join(root, 'file'), '')
    await assert.rejects(ensureDataDir(join(root, 'file')), { name: 'DataDirError', code: 'ENOTDIR' })
    await assert.rejects(ensureDataDir(join(root, 'file', 'data')), { name: 'DataDirError', code: 'ENOTDIR' })
    await assert.rejects(acquireDataDirLock(join(root, 'file')), { name: 'DataDirError', code: 'ENOTDIR' })
  })
})
