/**
 * V8's heap and the C allocator, set for the bulk verbs' work rather than for the machine.
 *
 * V8 sizes its young generation (two semi-spaces) from the heap limit, which it
 * derives from the machine's memory: with 24 GB it lets each semi-space grow to
 * 64 MiB, and a scavenger that keeps finding survivors grows it there. A sync
 * does: over a 100,000-record mirror (126,000 blocks) the new space reached 134 MB
 * while the whole live heap after a full collection stayed at 40–65 MB, so about a
 * third of the peak RSS was an emptied nursery (bench/mirror.ts: 445–475 MB peak;
 * with 16 MiB semi-spaces 375–390 MB, and no slower on the noisy 2-core machine:
 * the scavenges are more, each is shorter). 8 MiB was not lower (more promoted
 * garbage in the old generation) and 4 MiB was slower.
 *
 * Two settings of glibc's allocator go with it, for the memory outside V8's heap.
 * LevelDB writes on libuv's pool threads, and glibc gives each thread its own
 * arena: a memtable (4 MiB, or a whole advance batch: ~20 MB for 126,000 holds)
 * built on one thread and freed from another stays in that arena, and so did
 * three arenas of ~16 MB each at the peak. `MALLOC_ARENA_MAX=2` bounds the arenas;
 * a fixed `MALLOC_MMAP_THRESHOLD_` (glibc's default, 128 KiB) stops glibc from
 * raising the threshold after the first large free, so large buffers (the advance
 * batch's, the CAR's chunks) keep being mapped and unmapped rather than left in
 * the heap. Together about 25–50 MB off the peak, no slower (bench/mirror.ts, 100,000
 * records: 351–363 MB without, 311–335 MB with). Other C libraries ignore them.
 *
 * The old generation, for its part, may grow to as much as four times what the last
 * full collection kept before the next one, and what the sync promotes is mostly
 * short-lived: the old space reached 136 MB with ~40 MB live in some runs and 50 MB
 * in others, which made the peak swing between 300 and 415 MB. With
 * `--heap-growing-percent=50` (1.5×) it runs 13 full collections instead of ~5,
 * each a few ms, and the peak stays at 278–287 MB with the same sync time.
 *
 * The semi-space size can only be set when V8 starts (`v8.setFlagsFromString` is
 * too late for it), so the verbs that do bulk work re-execute this same process
 * with the flags
 * (`process.execve`: same pid, same stdio, signals and exit code; the kernel keeps
 * the process's peak RSS across the exec, so nothing is hidden from a measurement).
 * It costs one more Node start-up (~40 ms) and happens before any work, so only
 * the long verbs pay it; quick ones (status, block get, --help) do not. A flag
 * already given (on the command line or in NODE_OPTIONS) is left as it is, and so
 * is an allocator setting in the environment; a Node
 * without `process.execve` (Windows, older than 22.15) runs on with V8's default.
 */

/** The V8 flags a bulk verb runs with (see the header for the measurements). */
export const V8_FLAGS: ReadonlyArray<{ name: string, value: number }> = [
  // MiB per semi-space
  { name: '--max-semi-space-size', value: 16 },
  // the old generation may grow to 1.5× what the last full collection kept
  { name: '--heap-growing-percent', value: 50 }
]
/** Verbs that stream, hash and write whole repos. */
const BULK = new Set(['mirror', 'daemon', 'verify', 'export', 'car'])

/**
 * Re-executes the process with the V8 flags it lacks (and the allocator's
 * settings, unless the environment has its own) when `verb` does bulk work;
 * returns otherwise, and when every flag is set already.
 */
export function relaunchForBulkWork (verb: string | undefined): void {
  if (verb === undefined || !BULK.has(verb)) return
  const execve = (process as { execve?: (file: string, args: string[], env: NodeJS.ProcessEnv) => never }).execve
  if (typeof execve !== 'function') return
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].map(arg => arg.replaceAll('_', '-'))
  const missing = V8_FLAGS.filter(({ name }) => !given.some(arg => arg === name || arg.startsWith(name + '=')))
  if (missing.length === 0) return
  const env = { MALLOC_ARENA_MAX: '2', MALLOC_MMAP_THRESHOLD_: '131072', ...process.env }
  execve.call(process, process.execPath, [process.execPath, ...missing.map(({ name, value }) => `${name}=${value}`), ...process.execArgv, ...process.argv.slice(1)], env)
}
