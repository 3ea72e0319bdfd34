/**
 * `<dataDir>/daemon.json`: how the CLI finds a running daemon. Written by the node
 * when its control API is up, removed when it stops. A file whose pid is gone was
 * left by a killed daemon and is ignored; so is a malformed one, unless a live
 * process holds the data directory (then it is an error: a daemon may be running).
 */
import { readFile, rename, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { DaemonInfoError } from '../errors.ts'
import { dataDirError, isHolderAlive, lockPath, readHolder } from '../mirror/lock.ts'

export interface DaemonInfo {
  pid: number
  /** Control API base URL, e.g. `http://127.0.0.1:5176`. */
  api: string
  /** Null when the node runs without the peer-to-peer network. */
  peerId: string | null
  addresses: string[]
  network: string | null
  dataDir: string
  startedAt: string
  version: string
}

export function daemonInfoPath (dataDir: string): string {
  return join(dataDir, 'daemon.json')
}

/** Writes daemon.json atomically (temp file + rename). */
export async function writeDaemonInfo (dataDir: string, info: DaemonInfo): Promise<void> {
  const path = daemonInfoPath(dataDir)
  const tmp = `${path}.${process.pid}.tmp`
  await writeFile(tmp, JSON.stringify(info, null, 2) + '\n', { mode: 0o644 })
  await rename(tmp, path)
}

/** Removes daemon.json if it still names this process. */
export async function removeDaemonInfo (dataDir: string, pid = process.pid): Promise<void> {
  let info: DaemonInfo | undefined
  try {
    info = await readDaemonInfo(dataDir)
  } catch (err) {
    if (err instanceof DaemonInfoError) return // not ours to remove
    throw err
  }
  if (info?.pid !== pid) return
  await unlink(daemonInfoPath(dataDir)).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err
  })
}

/**
 * Reads daemon.json; undefined when absent. Does not check the pid.
 *
 * @throws DaemonInfoError when the file is not JSON of the form a daemon writes
 */
export async function readDaemonInfo (dataDir: string): Promise<DaemonInfo | undefined> {
  const path = daemonInfoPath(dataDir)
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw dataDirError(dataDir, err)
  }
  let info: unknown
  try {
    info = JSON.parse(text)
  } catch (err) {
    throw new DaemonInfoError(path, `not JSON (${(err as Error).message})`)
  }
  if (info === null || typeof info !== 'object' || Array.isArray(info)) throw new DaemonInfoError(path, 'not a JSON object')
  const { pid, api } = info as Partial<Record<keyof DaemonInfo, unknown>>
  if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid <= 0) throw new DaemonInfoError(path, '"pid" is not a process id')
  if (typeof api !== 'string' || !isHttpUrl(api)) throw new DaemonInfoError(path, '"api" is not an http URL')
  return info as DaemonInfo
}

function isHttpUrl (text: string): boolean {
  try {
    const url = new URL(text)
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== ''
  } catch {
    return false
  }
}

/**
 * daemon.json of a daemon that is running now; undefined otherwise. Running means the
 * data-directory lock is held, alive, by the pid daemon.json names (a pid alone could
 * have been reused since a crash).
 *
 * @throws DaemonInfoError when daemon.json is malformed while a live process holds
 * the data directory (a daemon may run, but cannot be reached); a malformed file
 * with no live holder is ignored
 */
export async function findRunningDaemon (dataDir: string): Promise<DaemonInfo | undefined> {
  return (await inspectDaemon(dataDir)).running
}

/**
 * What daemon.json says: a daemon that runs now (`running`), or one that is gone
 * and left the file behind (`stale`: killed, or its machine lost power).
 *
 * @throws DaemonInfoError as {@link findRunningDaemon}
 */
export async function inspectDaemon (dataDir: string): Promise<{ running?: DaemonInfo, stale?: DaemonInfo }> {
  let info: DaemonInfo | undefined
  let malformed: DaemonInfoError | undefined
  try {
    info = await readDaemonInfo(dataDir)
  } catch (err) {
    if (!(err instanceof DaemonInfoError)) throw err
    malformed = err
  }
  if (info === undefined && malformed === undefined) return {}
  const holder = await readHolder(lockPath(dataDir))
  const alive = holder !== undefined && await isHolderAlive(holder)
  if (malformed !== undefined) {
    if (alive) throw malformed
    return {}
  }
  return alive && holder?.pid === info?.pid ? { running: info } : { stale: info }
}
