// Real Debezium for the end-to-end tests: runs Debezium's embedded engine with the connector
// properties in args[0] and writes every event it emits (changes, tombstones, heartbeats) to
// the Kafka topic Debezium names for it, key and value as Kafka Connect's JSON converter
// writes them, through the brokers in args[1]: what a Kafka Connect worker running the
// Postgres connector would put on the topics. Prints "streaming" once the engine runs;
// stops on SIGTERM. Connector properties named `producer.<setting>` set the Kafka producer's
// `<setting>` (a benchmark batches; the tests keep one record per batch).
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;
import java.io.FileInputStream;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringSerializer;

public class DebeziumToKafka {
    public static void main(String[] args) throws Exception {
        Properties connector = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            connector.load(in);
        }
        Properties kafka = new Properties();
        kafka.put("bootstrap.servers", args[1]);
        kafka.put("key.serializer", StringSerializer.class.getName());
        kafka.put("value.serializer", StringSerializer.class.getName());
        kafka.put("acks", "all");
        kafka.put("enable.idempotence", "true");
        kafka.put("linger.ms", "0");
        // In order on the topic whatever the broker does with requests in flight.
        kafka.put("max.in.flight.requests.per.connection", "1");
        // One record per batch: the test broker's high watermark is exact then.
        kafka.put("batch.size", "1");
        for (String name : connector.stringPropertyNames()) {
            if (name.startsWith("producer.")) {
                kafka.put(name.substring("producer.".length()), connector.getProperty(name));
            }
        }
        KafkaProducer<String, String> producer = new KafkaProducer<>(kafka);
        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class)
                .using(connector)
                .notifying((records, committer) -> {
                    for (ChangeEvent<String, String> r : records) {
                        producer.send(new ProducerRecord<>(r.destination(), r.key(), r.value()));
                        committer.markProcessed(r);
                    }
                    producer.flush();
                    committer.markBatchFinished();
                })
                .using((success, message, error) -> {
                    if (!success) {
                        System.err.println("debezium stopped: " + message);
                        if (error != null) {
                            error.printStackTrace();
                        }
                        System.exit(1);
                    }
                })
                .build();
        ExecutorService executor = Executors.newSingleThreadExecutor();
        executor.execute(engine);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                engine.close();
                executor.shutdown();
                executor.awaitTermination(10, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            }
            producer.close();
        }));
        System.out.println("streaming");
        System.out.flush();
        executor.awaitTermination(365, TimeUnit.DAYS);
    }
}
