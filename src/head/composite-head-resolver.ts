/**
 * Asks every source at once and keeps the highest verified rev: each source
 * verifies what it returns, so the newest verified commit is the head. When no
 * source succeeds, one {@link HeadUnavailableError} lists every source's reason.
 */
import { HeadUnavailableError } from '../errors.ts'
import { compareRevs, type Head, type HeadResolver, type ResolveHeadOptions } from './head-resolver.ts'

/** {@link HeadResolver} over several sources (the PDS, peers). */
export class CompositeHeadResolver implements HeadResolver {
  readonly name = 'composite'
  private readonly sources: HeadResolver[]

  constructor (sources: HeadResolver[]) {
    this.sources = [...sources]
  }

  async resolveHead (did: string, options: ResolveHeadOptions = {}): Promise<Head> {
    const results = await Promise.allSettled(this.sources.map(async source => await source.resolveHead(did, options)))
    options.signal?.throwIfAborted()
    let best: Head | undefined
    const errors: Array<{ source: string, error: Error }> = []
    results.forEach((result, i) => {
      if (result.status === 'fulfilled') {
        if (best === undefined || compareRevs(result.value.rev, best.rev) > 0) best = result.value
      } else {
        const error = result.reason instanceof Error ? result.reason : new Error(String(result.reason))
        errors.push({ source: this.sources[i]?.name ?? `source ${i}`, error })
      }
    })
    if (best !== undefined) return best
    throw new HeadUnavailableError(did, errors)
  }
}
