"""An Amazon SQS-compatible endpoint at ``/sqs/``: SQS's JSON protocol
(``X-Amz-Target: AmazonSQS.<Action>``), authenticated with AWS Signature V4,
where the access key id is an mqadmin token's key id and the secret key its
secret. Every action calls ``queues.broker``; this package only translates."""
