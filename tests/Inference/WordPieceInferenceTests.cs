using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Data;
using ComposerSharp.Inference;
using ComposerSharp.Models;
using ComposerSharp.Tests.Data;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training.Checkpoints;
using Microsoft.Extensions.DependencyInjection;
using NUnit.Framework;

namespace ComposerSharp.Tests.Inference;

/// <summary>A BERT WordPiece vocabulary through train, eval, predict, export, import and fine-tuning, recorded in the checkpoint.</summary>
[TestFixture]
public class WordPieceInferenceTests
{
    private const string Tiny = "hidden_size: 32, num_heads: 4, intermediate_size: 64, num_layers: 2, max_sequence_length: 64";
    private string _dir = null!;

    [OneTimeSetUp]
    public void WriteData()
    {
        _dir = Path.Combine(Path.GetTempPath(), "composersharp-wordpiece-cli-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path.Combine(_dir, "text"));
        var random = new Random(5);
        string[] spam = { "win money now", "free prize claim today", "cheap pills offer", "click here to win" };
        string[] ham = { "meeting moved to tuesday", "see you at lunch", "the report is attached", "thanks for the review" };
        File.WriteAllLines(Path.Combine(_dir, "data.jsonl"), Enumerable.Range(0, 48).Select(i =>
        {
            string[] words = i % 2 == 0 ? spam : ham;
            return $"{{\"text\": \"{words[random.Next(4)]}. {words[random.Next(4)]}!\", \"label\": \"{(i % 2 == 0 ? "spam" : "ham")}\"}}";
        }));
        File.WriteAllText(Path.Combine(_dir, "text", "a.txt"), string.Join(" ", Enumerable.Range(0, 200).Select(i => ham[i % 4] + ".")));
    }

    [OneTimeTearDown]
    public void Delete() => Directory.Delete(_dir, recursive: true);

    private static ModelDescription DescriptionOf(string ckpt) =>
        ModelDescription.FromJson(CheckpointFile.ReadMetadata(ckpt)[ModelDescription.MetadataKey], ckpt);

    private string Train(string name, string yamlBody, int batches)
    {
        string folder = Path.Combine(_dir, name);
        string yaml = $$"""
            run_folder: {{folder}}
            max_duration: {{batches}}ba
            progress_bar: false
            optimizer: {name: adamw, lr: 0.01}
            {{yamlBody}}
            """;
        using var services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        new TrainJob(ConfigSection.Parse(yaml), services).Train();
        return Directory.GetFiles(Path.Combine(folder, "checkpoints"), "ep*.ckpt").Single(f => f.EndsWith($"-ba{batches}-rank0.ckpt", StringComparison.Ordinal));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void TheCheckpointCarriesTheVocabularySoEvalPredictAndExportNeedNothingElse()
    {
        string vocab = SmallBertVocabulary.WriteFolder(_dir);
        var tokenizer = BertWordPieceTokenizer.Load(vocab);
        string ckpt = Train("cls", $$"""
            tokenizer: {{vocab}}
            model: {name: bert_classification, pooling: mean, {{Tiny}} }
            train_loader: {batch_size: 8, shuffle: true, dataset: {name: jsonl_classification, path: {{_dir}}/data.jsonl, max_length: 64, labels: [ham, spam]} }
            """, batches: 18);
        Directory.Delete(vocab, recursive: true); // from here on only the checkpoint knows the vocabulary

        ModelDescription d = DescriptionOf(ckpt);
        Assert.That(d.Tokenizer, Is.EqualTo("bert_wordpiece"));
        Assert.That(d.TokenizerSha256, Is.EqualTo(tokenizer.VocabSha256));
        Assert.That(d.TokenizerRegularCount, Is.EqualTo(SmallBertVocabulary.Tokens.Length - 5));
        Assert.That(d.TokenizerFiles!["vocab.txt"], Is.EqualTo(string.Join('\n', SmallBertVocabulary.Tokens) + "\n"));
        Assert.That(d.Config.VocabSize, Is.EqualTo(64), "the embedding is sized from the WordPiece vocabulary (43 ids, rounded up to 64), not GPT-2's");

        // eval (no tokenizer key: the checkpoint's) and predict agree.
        string yaml = $$"""
            run_folder: {{_dir}}/eval
            progress_bar: false
            load_path: {{ckpt}}
            eval_loader: {batch_size: 16, dataset: {name: jsonl_classification, path: {{_dir}}/data.jsonl, max_length: 64} }
            """;
        double evalAccuracy;
        using (var services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider())
        {
            evalAccuracy = new TrainJob(ConfigSection.Parse(yaml), services).Evaluate().FinalMetrics["metrics/eval/Accuracy"];
        }

        var rows = File.ReadAllLines(Path.Combine(_dir, "data.jsonl")).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement)
            .Select(e => (Text: e.GetProperty("text").GetString()!, Label: e.GetProperty("label").GetString()!)).ToArray();
        using (TextClassifier classifier = TextClassifier.Load(ckpt))
        {
            IReadOnlyList<ClassPrediction> predictions = classifier.Predict(rows.Select(r => r.Text), batchSize: 16);
            double accuracy = rows.Zip(predictions).Count(p => p.First.Label == p.Second.Label) / (double)rows.Length;
            Assert.That(accuracy, Is.EqualTo(evalAccuracy).Within(1e-12));
            Assert.That(accuracy, Is.GreaterThan(0.75), "learned from WordPiece ids");
        }

        Assert.That(CliApp.Run(new[] { "predict", "--load-path", ckpt, "--input", Path.Combine(_dir, "data.jsonl"), "--output", Path.Combine(_dir, "p.jsonl") }, new StringWriter()), Is.Zero);

        // export writes the Hugging Face tokenizer files; importing that folder reads text with its vocab.txt again.
        string hf = Path.Combine(_dir, "hf-wordpiece");
        Assert.That(CliApp.Run(new[] { "export", "--load-path", ckpt, "--output", hf }, new StringWriter()), Is.Zero);
        Assert.That(File.ReadAllText(Path.Combine(hf, "vocab.txt")), Is.EqualTo(d.TokenizerFiles["vocab.txt"]));
        Assert.That(File.ReadAllText(Path.Combine(hf, "tokenizer_config.json")), Does.Contain("\"tokenizer_class\": \"BertTokenizer\"").And.Contain("\"model_max_length\": 64"));
        Assert.That(File.Exists(Path.Combine(hf, "special_tokens_map.json")), Is.True);
        Assert.That(File.Exists(Path.Combine(hf, "vocab.json")), Is.False, "no GPT-2 files for a WordPiece model");

        string imported = Train("imported", $$"""
            model: {name: bert_classification, pretrained: {{hf}}}
            train_loader: {batch_size: 8, dataset: {name: jsonl_classification, path: {{_dir}}/data.jsonl, max_length: 64} }
            """, batches: 1);
        Assert.That(DescriptionOf(imported).TokenizerSha256, Is.EqualTo(tokenizer.VocabSha256), "an imported BERT reads text with its own vocab.txt");
        Assert.That(DescriptionOf(imported).Classification!.Pooling, Is.EqualTo(SequencePooling.Mean), "the folder's classifier_pooling");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void FineTuningAnMlmCheckpointKeepsItsWordPieceVocabulary()
    {
        string vocab = SmallBertVocabulary.WriteFolder(_dir);
        string mlm = Train("mlm", $$"""
            tokenizer: {{vocab}}
            model: {name: bert_mlm, {{Tiny}} }
            train_loader: {batch_size: 8, dataset: {name: text_mlm, path: {{_dir}}/text, block_size: 32} }
            """, batches: 2);
        Directory.Delete(vocab, recursive: true);
        ModelDescription pretrained = DescriptionOf(mlm);
        Assert.That(pretrained.Tokenizer, Is.EqualTo("bert_wordpiece"));

        string cls = Train("finetuned", $$"""
            load_path: {{mlm}}
            load_weights_only: true
            load_strict_model_weights: false
            model: {name: bert_classification, {{Tiny}} }
            train_loader: {batch_size: 8, dataset: {name: jsonl_classification, path: {{_dir}}/data.jsonl, max_length: 64} }
            """, batches: 1);
        ModelDescription tuned = DescriptionOf(cls);
        Assert.That(tuned.Tokenizer, Is.EqualTo("bert_wordpiece"));
        Assert.That(tuned.TokenizerSha256, Is.EqualTo(pretrained.TokenizerSha256), "the classifier read its data with the MLM checkpoint's vocabulary");

        using MaskFiller filler = MaskFiller.Load(mlm);
        IReadOnlyList<MaskFill> fills = filler.Fill("see you at [MASK].", topK: 3).Single();
        Assert.That(fills.Select(f => f.TokenId), Has.All.Matches<int>(id => !filler.Tokenizer.Vocabulary.IsSpecial(id) && id < SmallBertVocabulary.Tokens.Length), "only ordinary WordPiece tokens are candidates");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void APretrainedBertFolderWithoutVocabTxtIsRefusedNotReadWithGpt2()
    {
        string vocab = SmallBertVocabulary.WriteFolder(_dir);
        string mlm = Train("mlm-to-export", $$"""
            tokenizer: {{vocab}}
            model: {name: bert_mlm, {{Tiny}} }
            train_loader: {batch_size: 8, dataset: {name: text_mlm, path: {{_dir}}/text, block_size: 32} }
            """, batches: 1);
        string hf = Path.Combine(_dir, "hf-no-vocab");
        Assert.That(CliApp.Run(new[] { "export", "--load-path", mlm, "--output", hf }, new StringWriter()), Is.Zero);
        File.Delete(Path.Combine(hf, "vocab.txt"));
        string body = $$"""
            model: {name: bert_mlm, pretrained: {{hf}}}
            train_loader: {batch_size: 8, dataset: {name: text_mlm, path: {{_dir}}/text, block_size: 32} }
            """;

        var ex = Assert.Throws<ConfigException>(() => Train("no-vocab", body, batches: 1));
        Assert.That(ex!.Message, Does.Contain($"'model.pretrained' is '{hf}'").And.Contain("no vocab.txt or tokenizer.json").And.Contain("'tokenizer'"));

        File.WriteAllText(Path.Combine(hf, "tokenizer.json"), "{}");
        ex = Assert.Throws<ConfigException>(() => Train("json-only", body, batches: 1));
        Assert.That(ex!.Message, Does.Contain("no vocab.txt (its tokenizer.json is not read"));

        string named = Train("named", $"tokenizer: {vocab}\n" + body, batches: 1);
        Assert.That(DescriptionOf(named).Tokenizer, Is.EqualTo("bert_wordpiece"), "the 'tokenizer' key still supplies the vocabulary");
    }

    [Test]
    public void ABadTokenizerValueIsAConfigErrorNamingIt()
    {
        using var services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        string yaml = $$"""
            run_folder: {{_dir}}/bad
            max_duration: 1ba
            tokenizer: {{_dir}}/no-such-vocab
            model: {name: bert_classification, {{Tiny}} }
            train_loader: {batch_size: 8, dataset: {name: jsonl_classification, path: {{_dir}}/data.jsonl} }
            """;
        var ex = Assert.Throws<ConfigException>(() => new TrainJob(ConfigSection.Parse(yaml), services).Train());
        Assert.That(ex!.Message, Does.Contain("'tokenizer' is '" + _dir + "/no-such-vocab'").And.Contain("gpt2"));
    }
}
