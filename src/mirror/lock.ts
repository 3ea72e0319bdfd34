/**
 * One process per data directory. The daemon and every direct-mode CLI write take
 * `<dir>/lock` before touching the stores; a second taker gets DataDirLockedError
 * naming the directory and the holder's pid.
 *
 * The lock file is created complete and atomically: the holder record is written to a
 * private temp file which is then hard-linked to `lock` (link fails with EEXIST when
 * the lock exists), so a reader never sees a half-written lock.
 *
 * A lock left by a dead process (SIGKILL, power loss) is taken over. "Dead" means the
 * pid no longer runs, or runs but is another process: on Linux the holder also records
 * the boot id and its process start time, so a pid reused after a reboot or by an
 * unrelated process does not keep the directory locked forever. A holder on another
 * host (shared filesystem) is always treated as alive.
 *
 * Takeover race: two processes may find the same stale lock at once. Removing it is
 * guarded by `lock.takeover` (mkdir is atomic): only the guard's owner removes the
 * stale file, and only if it still holds the stale record it inspected, so nobody can
 * delete a lock that a faster contender has just taken. The contenders then race on
 * link() again, which exactly one wins. A guard left by a process killed inside that
 * few-microsecond window is removed once it is older than `staleGuardMs`.
 */
import { randomBytes } from 'node:crypto'
import { link, mkdir, readFile, rmdir, stat, unlink, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { dirname, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { logger } from '@libp2p/logger'
import { DataDirError, DataDirLockedError } from '../errors.ts'

const log = logger('atmirror:lock')

/** The record stored in the lock file. */
export interface LockHolder {
  pid: number
  host: string
  /** Random per acquisition: tells this holder apart from an earlier one with the same pid. */
  nonce: string
  /** ISO time the lock was taken. */
  since: string
  /** Linux only: `/proc/sys/kernel/random/boot_id` when the lock was taken. */
  bootId?: string
  /** Linux only: the holder's start time in clock ticks since boot (`/proc/<pid>/stat` field 22). */
  startTime?: string
}

export interface DataDirLockInit {
  /**
   * How many times to retry after removing a stale lock before giving up.
   *
   * @default 20
   */
  attempts?: number
  /**
   * A takeover guard older than this was left by a crashed process and is removed.
   *
   * @default 10000
   */
  staleGuardMs?: number
}

/** A held data-directory lock. `release()` is idempotent. */
export class DataDirLock {
  /** The data directory. */
  readonly dir: string
  /** The lock file. */
  readonly path: string
  readonly holder: LockHolder
  #released = false

  constructor (dir: string, path: string, holder: LockHolder) {
    this.dir = dir
    this.path = path
    this.holder = holder
  }

  get released (): boolean {
    return this.#released
  }

  /** Removes the lock file if it is still ours. */
  async release (): Promise<void> {
    if (this.#released) return
    this.#released = true
    const current = await readHolder(this.path)
    if (current?.nonce !== this.holder.nonce) {
      log.error('lock %s no longer holds our record; leaving it', this.path)
      return
    }
    await unlink(this.path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err
    })
  }

  async [Symbol.asyncDispose] (): Promise<void> {
    await this.release()
  }
}

/** The lock file of a data directory. */
export function lockPath (dir: string): string {
  return join(dir, 'lock')
}

/**
 * Takes the data directory's lock, creating the directory if needed. Throws
 * DataDirLockedError when a live process holds it.
 */
export async function acquireDataDirLock (dir: string, init: DataDirLockInit = {}): Promise<DataDirLock> {
  const attempts = init.attempts ?? 20
  const staleGuardMs = init.staleGuardMs ?? 10_000
  await ensureDataDir(dir)
  const path = lockPath(dir)
  const holder = await selfHolder()
  const tmp = `${path}.${process.pid}.${holder.nonce}.tmp`
  try {
    await writeFile(tmp, JSON.stringify(holder) + '\n', { mode: 0o600, flag: 'wx' })
  } catch (err) {
    throw dataDirError(dir, err)
  }
  try {
    for (let attempt = 0; attempt < attempts; attempt++) {
      try {
        await link(tmp, path)
        log('locked %s (pid %d)', path, holder.pid)
        return new DataDirLock(dir, path, holder)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      }
      const current = await readHolder(path)
      if (current === undefined) continue // released between our link and read
      if (await isHolderAlive(current)) throw new DataDirLockedError(dir, { pid: current.pid })
      log('lock %s is stale (pid %d is gone); taking it over', path, current.pid)
      await removeStale(path, current, staleGuardMs)
    }
    // Only reachable when contenders keep winning: report whoever holds it now.
    const current = await readHolder(path)
    throw new DataDirLockedError(dir, { pid: current?.pid })
  } finally {
    await unlink(tmp).catch(() => {})
  }
}

/**
 * Creates the data directory (mode 0700) and any missing parents, or checks that the
 * path is a directory. Failures are {@link DataDirError}.
 *
 * @NOTE not `mkdir(dir, { recursive: true })`: on a filesystem that refuses to
 * create anything and answers ENOENT (`/proc/x`), Node's recursive mkdir retries
 * forever, busy, and the process ignores SIGINT/SIGTERM. Here each level is
 * created once, at most twice.
 */
export async function ensureDataDir (dir: string): Promise<void> {
  const parent = dirname(dir)
  try {
    await mkdir(dir, { mode: 0o700 })
    return
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') {
      const info = await stat(dir).catch((statErr: unknown) => { throw dataDirError(dir, statErr) })
      if (!info.isDirectory()) throw new DataDirError(dir, 'the path names a file, not a directory', { code: 'ENOTDIR' })
      return
    }
    if (code !== 'ENOENT') throw dataDirError(dir, err)
    // the parent is there, yet the directory cannot be made: the filesystem will not have it
    if (parent === dir || await stat(parent).then(() => true, () => false)) {
      throw new DataDirError(dir, 'this filesystem does not allow creating it', { code }, { cause: err })
    }
  }
  await ensureDataDir(parent)
  try {
    await mkdir(dir, { mode: 0o700 })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw dataDirError(dir, err)
  }
}

/** A system error about the data directory, as a {@link DataDirError} that says what is wrong. */
export function dataDirError (dir: string, err: unknown): Error {
  if (err instanceof DataDirError || (err as Error)?.name === 'AbortError') return err as Error
  const code = (err as NodeJS.ErrnoException)?.code
  const reason = code === 'EACCES' || code === 'EPERM'
    ? 'permission denied'
    : code === 'ENOTDIR'
      ? 'the path (or a parent) names a file, not a directory'
      : code === 'EROFS'
        ? 'read-only filesystem'
        : code === 'ENOSPC'
          ? 'no space left on the device'
          : (err as Error)?.message ?? String(err)
  return new DataDirError(dir, reason, { code }, { cause: err })
}

/** Reads the holder record of a lock file; undefined when there is none (or it is unreadable). */
export async function readHolder (path: string): Promise<LockHolder | undefined> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  try {
    const value = JSON.parse(text) as LockHolder
    if (typeof value.pid !== 'number' || typeof value.nonce !== 'string') throw new Error('not a lock record')
    return value
  } catch {
    // Lock files are created complete (link), so garbage here came from elsewhere;
    // a record nobody can own is stale.
    return { pid: -1, host: hostname(), nonce: `garbage:${text.length}:${text.slice(0, 64)}`, since: '' }
  }
}

/** Whether the process named by a lock record still runs. */
export async function isHolderAlive (holder: LockHolder): Promise<boolean> {
  if (holder.host !== hostname()) return true // cannot check another machine: assume it runs
  if (!Number.isInteger(holder.pid) || holder.pid <= 0) return false
  if (holder.pid === process.pid) return true // another node in this very process
  try {
    process.kill(holder.pid, 0)
  } catch (err) {
    // EPERM: it exists but belongs to another user
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false
  }
  // a killed process its parent has not reaped yet still answers kill(pid, 0)
  if (await readProcessState(holder.pid) === 'Z') return false
  if (holder.bootId !== undefined && holder.startTime !== undefined) {
    const bootId = await readBootId()
    if (bootId !== undefined && bootId !== holder.bootId) return false // rebooted since
    const startTime = await readStartTime(holder.pid)
    if (startTime !== undefined && startTime !== holder.startTime) return false // pid reused
  }
  return true
}

async function removeStale (path: string, stale: LockHolder, staleGuardMs: number): Promise<void> {
  const guard = `${path}.takeover`
  try {
    await mkdir(guard)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    // Someone else is taking over; back off, or clear a guard a crashed process left.
    const info = await stat(guard).catch(() => undefined)
    if (info !== undefined && Date.now() - info.mtimeMs > staleGuardMs) {
      log('removing abandoned takeover guard %s', guard)
      await rmdir(guard).catch(() => {})
    } else {
      await sleep(10 + Math.floor(Math.random() * 40))
    }
    return
  }
  try {
    const current = await readHolder(path)
    if (current?.nonce === stale.nonce) {
      await unlink(path).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err
      })
    }
  } finally {
    await rmdir(guard).catch(() => {})
  }
}

async function selfHolder (): Promise<LockHolder> {
  const holder: LockHolder = {
    pid: process.pid,
    host: hostname(),
    nonce: randomBytes(8).toString('hex'),
    since: new Date().toISOString()
  }
  const [bootId, startTime] = await Promise.all([readBootId(), readStartTime(process.pid)])
  if (bootId !== undefined && startTime !== undefined) {
    holder.bootId = bootId
    holder.startTime = startTime
  }
  return holder
}

async function readBootId (): Promise<string | undefined> {
  try {
    return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim()
  } catch {
    return undefined
  }
}

/** Linux: the fields of `/proc/<pid>/stat` from field 3 (state) on; undefined elsewhere or when gone. */
async function readStatFields (pid: number): Promise<string[] | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, 'utf8')
    // The command name (field 2) is in parentheses and may contain spaces.
    return text.slice(text.lastIndexOf(')') + 2).split(' ')
  } catch {
    return undefined
  }
}

async function readStartTime (pid: number): Promise<string | undefined> {
  return (await readStatFields(pid))?.[19] // field 22 overall
}

/** `R`, `S`, … or `Z` for a zombie (dead, not yet reaped). */
async function readProcessState (pid: number): Promise<string | undefined> {
  return (await readStatFields(pid))?.[0]
}
