// Graphile Worker, tuned as its performance page recommends: 24 concurrent jobs, a pool of 25,
// a local queue of 500 jobs, batched completion. Usage: node graphile.mjs URL JOBS WORKERS
// Prints "enqueue_rate process_rate" (jobs/s).
import { run, makeWorkerUtils, Logger } from "graphile-worker";

// Per-job log lines would cost more than the no-op jobs themselves.
const logger = new Logger(() => (level, message) => {
  if (level === "error") console.error(message);
});

const [url, jobsArg, workersArg] = process.argv.slice(2);
const jobs = Number(jobsArg);
const workers = Number(workersArg);

const utils = await makeWorkerUtils({ connectionString: url, logger });
await utils.migrate();

// Enqueue: batches of 1,000 with addJobs, 4 at a time (as our benchmark does).
let start = performance.now();
const batch = Array.from({ length: 1000 }, (_, i) => ({ identifier: "noop", payload: { n: i } }));
for (let done = 0; done < jobs; ) {
  const round = [];
  for (let k = 0; k < 4 && done < jobs; k++, done += 1000) round.push(utils.addJobs(batch));
  await Promise.all(round);
}
const enqueueRate = jobs / ((performance.now() - start) / 1000);
await utils.release();

// Process: WORKERS runners in this process, each with the recommended settings.
let processed = 0;
let finish;
const finished = new Promise((resolve) => (finish = resolve));
start = performance.now();
const runners = await Promise.all(
  Array.from({ length: workers }, () =>
    run({
      connectionString: url,
      concurrency: 24,
      maxPoolSize: 25,
      noHandleSignals: true,
      pollInterval: 1000,
      taskList: {
        noop: async () => {
          if (++processed === jobs) finish();
        },
      },
      preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
      logger,
    }),
  ),
);
await finished;
const processRate = jobs / ((performance.now() - start) / 1000);
await Promise.all(runners.map((r) => r.stop()));
console.log(`${enqueueRate.toFixed(0)} ${processRate.toFixed(0)}`);
