// pg-boss, tuned for throughput: bulk insert, WORKERS loops each fetching and completing
// batches of 500 (its best setting here; 100 gave a third of the throughput). Usage: node pgboss.mjs URL JOBS WORKERS
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

// Process: WORKERS loops fetching batches of 500 and completing them in one call each (faster
// than boss.work(), whose workers wait a polling interval between batches).
start = performance.now();
let processed = 0;
await Promise.all(
  Array.from({ length: workers }, async () => {
    for (;;) {
      const got = await boss.fetch("bench", { batchSize: Number(process.env.BOSS_BATCH ?? 500) });
      if (!got || got.length === 0) break;
      await boss.complete("bench", got.map((j) => j.id));
      processed += got.length;
    }
  }),
);
if (processed !== jobs) console.error(`processed ${processed} of ${jobs}`);
const processRate = jobs / ((performance.now() - start) / 1000);
await boss.stop({ graceful: false, wait: false });
console.log(`${enqueueRate.toFixed(0)} ${processRate.toFixed(0)}`);
process.exit(0);
