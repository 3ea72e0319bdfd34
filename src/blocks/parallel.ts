/**
 * The bounded pools of atmirror, in one place (queues with priorities and per-key
 * order are the per-DID runner's, on @libp2p/utils' Queue).
 *
 * - {@link parallel}: map a source through `fn`, results as they come;
 * - {@link eachParallel}: run `fn` for every item, for effect only: no result is
 *   handed back, so a slot is refilled the moment a call settles rather than when
 *   the consumer asks for more (the sync's block writes measured slower through
 *   parallel).
 *
 * Both stop intake at the first failure and rethrow it once the calls in flight
 * have settled: nothing is left running behind the caller.
 */

/**
 * Maps `source` through `fn` with at most `concurrency` calls in flight, yielding
 * results in completion order. The first failure stops intake and is rethrown once
 * the calls in flight have settled; nothing is left running behind the caller.
 */
export async function * parallel<T, R> (source: Iterable<T> | AsyncIterable<T>, fn: (item: T) => Promise<R>, concurrency: number): AsyncGenerator<R> {
  const iterator = (Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : source[Symbol.iterator]()) as AsyncIterator<T> | Iterator<T>
  type Settled = { ok: true, value: R } | { ok: false, error: unknown }
  const settled: Settled[] = []
  let wake: (() => void) | undefined
  let active = 0
  let exhausted = false
  let failure: { error: unknown } | undefined
  const settle = (result: Settled): void => {
    active--
    settled.push(result)
    const w = wake
    wake = undefined
    w?.()
  }
  const waitForOne = async (): Promise<void> => { await new Promise<void>(resolve => { wake = resolve }) }
  try {
    while (true) {
      while (!exhausted && failure === undefined && active < concurrency) {
        const next = await iterator.next()
        if (next.done === true) {
          exhausted = true
          break
        }
        active++
        fn(next.value).then(value => { settle({ ok: true, value }) }, error => { settle({ ok: false, error }) })
      }
      const result = settled.shift()
      if (result === undefined) {
        if (active === 0) break
        await waitForOne()
        continue
      }
      if (!result.ok) failure ??= { error: result.error }
      else if (failure === undefined) yield result.value
    }
    if (failure !== undefined) throw failure.error
  } finally {
    if (!exhausted) await iterator.return?.()
    while (active > 0) await waitForOne()
  }
}

/**
 * Calls `fn` for every item of `source` (an array or any iterable, read lazily),
 * with at most `concurrency` calls in flight. The first failure stops intake and
 * is thrown once the calls in flight have settled.
 */
export async function eachParallel<T> (source: Iterable<T> | AsyncIterable<T>, fn: (item: T) => Promise<void>, concurrency: number): Promise<void> {
  const iterator = (Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : source[Symbol.iterator]()) as AsyncIterator<T> | Iterator<T>
  let failure: { error: unknown } | undefined
  let exhausted = false
  const worker = async (): Promise<void> => {
    while (failure === undefined && !exhausted) {
      let next: IteratorResult<T>
      try {
        next = await iterator.next()
      } catch (err) {
        failure ??= { error: err }
        return
      }
      if (next.done === true) {
        exhausted = true
        return
      }
      try {
        await fn(next.value)
      } catch (err) {
        failure ??= { error: err }
      }
    }
  }
  try {
    await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker))
  } finally {
    if (!exhausted) await iterator.return?.()
  }
  if (failure !== undefined) throw failure.error
}
