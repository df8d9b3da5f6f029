// pg-boss, tuned for throughput: bulk insert, WORKERS workers each fetching batches of 100,
// polling every 0.5 s. Usage: node pgboss.mjs URL JOBS WORKERS
// Prints "enqueue_rate process_rate" (jobs/s).
import { PgBoss } from "pg-boss";

const [url, jobsArg, workersArg] = process.argv.slice(2);
const jobs = Number(jobsArg);
const workers = Number(workersArg);

const boss = new PgBoss({ connectionString: url, max: workers + 4 });
boss.on("error", (e) => console.error(e));
await boss.start();
await boss.createQueue("bench");

let start = performance.now();
const batch = Array.from({ length: 1000 }, (_, i) => ({ data: { n: i } }));
for (let done = 0; done < jobs; ) {
  const round = [];
  for (let k = 0; k < 4 && done < jobs; k++, done += 1000) round.push(boss.insert("bench", batch));
  await Promise.all(round);
}
const enqueueRate = jobs / ((performance.now() - start) / 1000);

let processed = 0;
let finish;
const finished = new Promise((resolve) => (finish = resolve));
start = performance.now();
for (let w = 0; w < workers; w++) {
  await boss.work("bench", { batchSize: 100, pollingIntervalSeconds: 0.5 }, async (got) => {
    processed += got.length;
    if (processed >= jobs) finish();
  });
}
await finished;
const processRate = jobs / ((performance.now() - start) / 1000);
await boss.stop({ graceful: false, wait: false });
console.log(`${enqueueRate.toFixed(0)} ${processRate.toFixed(0)}`);
process.exit(0);
